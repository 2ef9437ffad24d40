//! Package installs into the plugin venv: pip (bootstrapped offline with `ensurepip` on
//! first use, because the venv is created without it), uv, or refused.

use std::{path::Path, process::Stdio};

use tokio::process::Command;

/// `--package-manager`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PackageManager {
    /// `python -m pip install`.
    Pip,
    /// `uv pip install --python <venv>`.
    Uv,
    /// Refuse installs.
    Disabled,
}

/// What to install.
#[derive(Debug, Clone)]
pub enum Install {
    /// Package specifiers.
    Packages(Vec<String>),
    /// A requirements file.
    Requirements(std::path::PathBuf),
}

async fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|e| format!("cannot run the package manager: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("the package manager failed ({}):\n{}", out.status, text.trim_end()))
    }
}

/// Why an install did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InstallError {
    /// `--package-manager disabled`: nothing was run.
    #[error("package installation is disabled on this plugin host (--package-manager disabled)")]
    Disabled,
    /// The request is invalid (no packages, an option instead of a package, a requirements
    /// file outside the plugin directory): nothing was run.
    #[error("{0}")]
    Invalid(String),
    /// The package manager failed.
    #[error("{0}")]
    Failed(String),
}

/// Install into the venv whose interpreter is `python`; the tool's output on success.
pub async fn install(manager: PackageManager, python: &Path, what: Install) -> Result<String, InstallError> {
    if manager == PackageManager::Disabled {
        return Err(InstallError::Disabled);
    }
    let args: Vec<String> = match &what {
        Install::Packages(p) if p.is_empty() => return Err(InstallError::Invalid("no packages given".to_string())),
        Install::Packages(p) => {
            // Every argument is a package: an option (`-r FILE`, `--index-url`) would let a
            // caller read files or pick a package index.
            if let Some(bad) = p.iter().find(|a| a.starts_with('-') || a.trim().is_empty()) {
                return Err(InstallError::Invalid(format!(
                    "{bad:?} is not a package specifier (options are not accepted)"
                )));
            }
            p.clone()
        }
        Install::Requirements(f) => vec!["-r".to_string(), f.display().to_string()],
    };
    install_with(manager, python, &args).await.map_err(InstallError::Failed)
}

async fn install_with(manager: PackageManager, python: &Path, args: &[String]) -> Result<String, String> {
    match manager {
        PackageManager::Disabled => Err(InstallError::Disabled.to_string()),
        PackageManager::Pip => {
            let mut out = String::new();
            let has_pip = Command::new(python)
                .args(["-c", "import pip"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !has_pip {
                out.push_str(&run(Command::new(python).args(["-m", "ensurepip", "--default-pip"])).await?);
            }
            let mut cmd = Command::new(python);
            cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"]).args(args);
            out.push_str(&run(&mut cmd).await?);
            Ok(out)
        }
        PackageManager::Uv => {
            let mut cmd = Command::new("uv");
            cmd.arg("pip").arg("install").arg("--python").arg(python).args(args);
            run(&mut cmd).await
        }
    }
}
