//! Admin calls the core forwards from its APIs: package installs, checking a trigger's
//! plugin, plugin uploads and the plugin-file listing. Each answers with the reply message
//! the core expects, failures classified by [`pb::ErrorKind`].

use weir_proto::plugin::v1 as pb;

use super::Host;
use crate::{
    files::FileError,
    packages::{Install, InstallError, install},
};

fn failure(kind: pb::ErrorKind, error: impl Into<String>) -> pb::AdminResult {
    pb::AdminResult { ok: false, error: error.into(), error_kind: kind as i32, ..Default::default() }
}

fn success(output: String) -> pb::AdminResult {
    pb::AdminResult { ok: true, output, ..Default::default() }
}

impl Host {
    /// Install packages, or a requirements file inside the plugin directory, into the venv.
    pub(super) async fn install(&self, req: pb::InstallPackages) -> pb::AdminResult {
        let what = if req.requirements_file.is_empty() {
            Install::Packages(req.packages)
        } else {
            // Absolute paths and escapes are refused like any plugin name.
            match crate::paths::resolve(&self.config.plugin_dir, &req.requirements_file) {
                Ok(path) => Install::Requirements(path),
                Err(e) => return failure(pb::ErrorKind::Invalid, e.to_string()),
            }
        };
        tracing::info!(?what, "installing packages into the plugin venv");
        match install(self.config.package_manager, &self.venv.python, what).await {
            Ok(output) => {
                // A preloaded module may have changed: new workers come from a new fork server.
                if let Some(fork) = &self.fork {
                    fork.restart().await;
                }
                success(output)
            }
            Err(e @ InstallError::Disabled) => failure(pb::ErrorKind::Refused, e.to_string()),
            Err(e @ InstallError::Invalid(_)) => failure(pb::ErrorKind::Invalid, e.to_string()),
            Err(e @ InstallError::Failed(_)) => failure(pb::ErrorKind::Failed, e.to_string()),
        }
    }

    /// Make sure a trigger's plugin is here before the core stores the trigger: a `gh:`
    /// plugin is fetched into the cache; a local one must be a `.py` file or a package
    /// directory (with `__init__.py`) inside the plugin directory.
    pub(super) async fn prepare_plugin(&self, name: &str) -> pb::AdminResult {
        if let Some(path) = crate::gh::gh_path(name) {
            return match self.gh.fetch(path).await {
                Ok(_) => success(String::new()),
                Err(e) => failure(pb::ErrorKind::Invalid, e.to_string()),
            };
        }
        let path = match crate::paths::resolve(&self.config.plugin_dir, name) {
            Ok(p) => p,
            Err(e) => return failure(pb::ErrorKind::Invalid, e.to_string()),
        };
        let usable = if path.is_dir() { path.join("__init__.py").is_file() } else { path.is_file() };
        if usable {
            success(String::new())
        } else {
            failure(
                pb::ErrorKind::Invalid,
                format!(
                    "plugin {name} in {} is neither a .py file nor a package directory with __init__.py",
                    self.config.plugin_dir.display()
                ),
            )
        }
    }

    /// Write a plugin file or replace a plugin directory, atomically.
    pub(super) async fn put_plugin(&self, req: pb::PutPlugin) -> pb::AdminResult {
        let dir = self.config.plugin_dir.clone();
        let name = req.plugin_name.clone();
        match tokio::task::spawn_blocking(move || crate::files::put(&dir, &req)).await {
            Ok(Ok(())) => {
                tracing::info!(plugin = %name, "plugin written");
                success(String::new())
            }
            Ok(Err(e)) => {
                let kind = match e {
                    FileError::Invalid(_) => pb::ErrorKind::Invalid,
                    FileError::Exists(_) => pb::ErrorKind::Exists,
                    FileError::Missing(_) => pb::ErrorKind::Missing,
                    FileError::Io(_) => pb::ErrorKind::Failed,
                };
                failure(kind, e.to_string())
            }
            Err(e) => failure(pb::ErrorKind::Failed, e.to_string()),
        }
    }

    /// The files of the plugin directory.
    pub(super) async fn list_files(&self) -> pb::PluginFiles {
        let dir = self.config.plugin_dir.clone();
        match tokio::task::spawn_blocking(move || crate::files::list(&dir)).await {
            Ok(Ok(files)) => pb::PluginFiles { files, error: String::new() },
            Ok(Err(error)) => pb::PluginFiles { files: Vec::new(), error },
            Err(e) => pb::PluginFiles { files: Vec::new(), error: e.to_string() },
        }
    }
}
