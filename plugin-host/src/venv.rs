//! The plugin virtualenv (`<plugin-dir>/.venv`) and the worker runtime installed into it.
//!
//! At start the host makes sure the venv exists and matches the chosen interpreter: a patch
//! difference (3.11.2 vs 3.11.9) is fine, a minor one (3.11 vs 3.12) rebuilds it with a
//! warning, because compiled packages would not load. The `weir_plugin` runtime ships inside
//! this binary and is written into the venv (plus a `.pth` file) on every start, so workers
//! and plugin authors' tools import it without network access, and upgrades take effect.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::Command;

/// The `weir_plugin` package files, embedded at build time.
const RUNTIME_FILES: [(&str, &str); 13] = [
    ("__init__.py", include_str!("../../python-sdk/weir_plugin/__init__.py")),
    ("api.py", include_str!("../../python-sdk/weir_plugin/api.py")),
    ("cache.py", include_str!("../../python-sdk/weir_plugin/cache.py")),
    ("engine.py", include_str!("../../python-sdk/weir_plugin/engine.py")),
    ("forkserver.py", include_str!("../../python-sdk/weir_plugin/forkserver.py")),
    ("line_builder.py", include_str!("../../python-sdk/weir_plugin/line_builder.py")),
    ("native.py", include_str!("../../python-sdk/weir_plugin/native.py")),
    ("_native.c", include_str!("../../python-sdk/weir_plugin/_native.c")),
    ("response.py", include_str!("../../python-sdk/weir_plugin/response.py")),
    ("rows.py", include_str!("../../python-sdk/weir_plugin/rows.py")),
    ("testing.py", include_str!("../../python-sdk/weir_plugin/testing.py")),
    ("worker.py", include_str!("../../python-sdk/weir_plugin/worker.py")),
    ("py.typed", include_str!("../../python-sdk/weir_plugin/py.typed")),
];

/// Errors preparing the venv.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interpreter could not be run.
    #[error("cannot run the Python interpreter {python:?}: {detail}")]
    Interpreter {
        /// What was run.
        python: String,
        /// Why it failed.
        detail: String,
    },
    /// `python -m venv` failed.
    #[error("creating the plugin venv at {path} failed: {detail}")]
    Create {
        /// Venv directory.
        path: PathBuf,
        /// pip/venv output.
        detail: String,
    },
    /// Filesystem error.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A ready venv.
#[derive(Debug, Clone)]
pub struct Venv {
    /// `<plugin-dir>/.venv`.
    pub dir: PathBuf,
    /// Its interpreter.
    pub python: PathBuf,
    /// Interpreter version, e.g. `3.11.2`.
    pub version: String,
    /// The runtime's C speedups (`weir_plugin/_native.c`) were built and load.
    pub native: bool,
}

/// Where the interpreter behind `python` is installed (`sys.base_prefix`,
/// `sys.base_exec_prefix`): workers need to read it.
pub async fn base_prefixes(python: &Path) -> Vec<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)"])
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            let mut dirs: Vec<PathBuf> = String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from).collect();
            dirs.dedup();
            dirs
        }
        _ => Vec::new(),
    }
}

async fn python_version(python: &Path) -> Result<String, Error> {
    let out = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Interpreter { python: python.display().to_string(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::Interpreter {
            python: python.display().to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `version` (or `version_info`) from a `pyvenv.cfg`.
fn cfg_version(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        matches!(k.trim(), "version" | "version_info").then(|| v.trim().to_string())
    })
}

fn minor(version: &str) -> &str {
    let mut dots = version.match_indices('.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((i, _))) => &version[..i],
        _ => version,
    }
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { context, path: path.to_path_buf(), source }
}

/// Make sure the venv (`venv`, default `<plugin_dir>/.venv`) exists for `python` and holds
/// the current runtime, with its C speedups built if `speedups` (and removed if not).
pub async fn ensure(plugin_dir: &Path, venv: Option<&Path>, python: &str, speedups: bool) -> Result<Venv, Error> {
    tokio::fs::create_dir_all(plugin_dir).await.map_err(io("creating the plugin directory", plugin_dir))?;
    let dir = venv.map_or_else(|| plugin_dir.join(".venv"), Path::to_path_buf);
    if let Some(parent) = dir.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io("creating the venv's parent directory", parent))?;
    }
    let wanted = python_version(Path::new(python)).await?;
    let cfg_path = dir.join("pyvenv.cfg");
    if let Ok(cfg) = tokio::fs::read_to_string(&cfg_path).await {
        match cfg_version(&cfg) {
            Some(have) if minor(&have) == minor(&wanted) => {}
            have => {
                tracing::warn!(
                    venv = %dir.display(),
                    venv_python = have.as_deref().unwrap_or("unknown"),
                    python = %wanted,
                    "the plugin venv was made for another Python minor version; rebuilding it (packages must be installed again)"
                );
                tokio::fs::remove_dir_all(&dir).await.map_err(io("removing the old venv", &dir))?;
            }
        }
    }
    if !cfg_path.exists() {
        tracing::info!(venv = %dir.display(), python = %wanted, "creating the plugin venv");
        // Without pip: creating the venv then takes milliseconds instead of seconds (package
        // installs, when they arrive, bootstrap pip with the offline `ensurepip`).
        let out = Command::new(python)
            .arg("-m")
            .arg("venv")
            .arg("--without-pip")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::Interpreter { python: python.to_string(), detail: e.to_string() })?;
        if !out.status.success() {
            return Err(Error::Create {
                path: dir,
                detail: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            });
        }
    }
    let venv_python = dir.join("bin").join("python");
    let version = python_version(&venv_python).await?;
    let native = install_runtime(&dir, &venv_python, speedups).await?;
    Ok(Venv { dir, python: venv_python, version, native })
}

/// Write the embedded `weir_plugin` package into the venv, point a `.pth` file at it and
/// build its speedups; whether they were built.
async fn install_runtime(venv: &Path, python: &Path, speedups: bool) -> Result<bool, Error> {
    let root = venv.join("weir-runtime");
    let pkg = root.join("weir_plugin");
    tokio::fs::create_dir_all(&pkg).await.map_err(io("creating", &pkg))?;
    for (name, text) in RUNTIME_FILES {
        let path = pkg.join(name);
        tokio::fs::write(&path, text).await.map_err(io("writing", &path))?;
    }
    let out = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Interpreter { python: python.display().to_string(), detail: e.to_string() })?;
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || site.as_os_str().is_empty() {
        return Err(Error::Interpreter {
            python: python.display().to_string(),
            detail: format!("cannot find site-packages: {}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    let pth = site.join("weir-runtime.pth");
    tokio::fs::write(&pth, format!("{}\n", root.display())).await.map_err(io("writing", &pth))?;
    if speedups {
        return Ok(build_native(python, &pkg).await);
    }
    // Turned off: nothing a worker could load may stay behind from an earlier start.
    let mut entries = tokio::fs::read_dir(&pkg).await.map_err(io("reading", &pkg))?;
    while let Some(entry) = entries.next_entry().await.map_err(io("reading", &pkg))? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("_native") && name != "_native.c" {
            tokio::fs::remove_file(entry.path()).await.map_err(io("removing", &entry.path()))?;
        }
    }
    Ok(false)
}

/// Compile the runtime's optional C speedups (`weir_plugin/_native.c`) into the venv. A
/// failure (most often: no C compiler) is logged and costs only speed; whether the module
/// was built and imports.
async fn build_native(python: &Path, pkg: &Path) -> bool {
    let out = Command::new(python)
        .args(["-m", "weir_plugin.native", "build"])
        .arg(pkg)
        .env("PYTHONPATH", pkg.parent().unwrap_or(pkg))
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => {
            tracing::debug!(result = %String::from_utf8_lossy(&out.stdout).trim(), "worker speedups ready");
            true
        }
        Ok(out) => {
            let detail = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            tracing::warn!(
                detail = %detail.trim(),
                "could not build the worker speedups (weir_plugin/_native.c); workers run without them, and deliver rows more slowly"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not run the worker speedups build; workers run without them");
            false
        }
    }
}

/// Where the runtime package lives inside a venv (workers also get it on `PYTHONPATH`).
pub fn runtime_dir(venv: &Path) -> PathBuf {
    venv.join("weir-runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_module_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python-sdk/weir_plugin");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".py") || name.ends_with(".c") {
                assert!(RUNTIME_FILES.iter().any(|(f, _)| *f == name), "{name} is not in RUNTIME_FILES");
            }
        }
    }

    #[test]
    fn versions() {
        assert_eq!(cfg_version("home = /usr/bin\nversion = 3.11.2\n").as_deref(), Some("3.11.2"));
        assert_eq!(cfg_version("version_info = 3.12.1.final.0").as_deref(), Some("3.12.1.final.0"));
        assert_eq!(minor("3.11.2"), "3.11");
        assert_eq!(minor("3.12.1.final.0"), "3.12");
        assert_eq!(minor("3.11.9"), minor("3.11.2"));
    }
}
