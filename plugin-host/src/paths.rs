//! Plugin paths: every name a user gives (a trigger's `plugin_filename`, a requirements
//! file, an upload) is checked here before anything is read or written.
//!
//! Two layers. [`check_name`] refuses, without touching the disk, anything that is not a
//! plain relative path of ordinary names: `..`, `.`, hidden names (which also protects
//! `.venv`), absolute paths, backslashes, `%` (percent-encoded tricks), NUL and other
//! control characters, `~`, URLs, and overlong names. [`resolve`] then follows the path on
//! disk and refuses it unless its real location (symlinks resolved) is inside the plugin
//! directory. Every refusal reads `Path traversal detected: <name>`.

use std::path::{Path, PathBuf};

pub use weir_proto::plugin_name::{MAX_NAME, check_name, traversal};

/// Why a plugin name was refused or not found.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Not a plain name inside the plugin directory (`Path traversal detected: <name>`).
    #[error("{0}")]
    Traversal(String),
    /// Nothing by that name.
    #[error("plugin {name} not found in {}: {source}", dir.display())]
    NotFound {
        /// The name.
        name: String,
        /// The plugin directory.
        dir: PathBuf,
        /// Why it could not be resolved.
        source: std::io::Error,
    },
    /// The plugin directory itself is unusable.
    #[error("plugin directory {}: {source}", dir.display())]
    PluginDir {
        /// The plugin directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `name` inside `plugin_dir`: its real path, which must exist and lie inside the plugin
/// directory's real path.
pub fn resolve(plugin_dir: &Path, name: &str) -> Result<PathBuf, PathError> {
    let rel = check_name(name).map_err(PathError::Traversal)?;
    let root =
        plugin_dir.canonicalize().map_err(|source| PathError::PluginDir { dir: plugin_dir.to_path_buf(), source })?;
    match plugin_dir.join(rel).canonicalize() {
        Ok(real) if real.starts_with(&root) && real != root => Ok(real),
        Ok(_) => Err(PathError::Traversal(traversal(name))),
        Err(source) => Err(PathError::NotFound { name: name.to_string(), dir: plugin_dir.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names an attacker might try. Every one must be refused as a traversal, and none
    /// may reach the secret outside the plugin directory.
    fn hostile(outside: &Path) -> Vec<String> {
        let out = outside.display().to_string();
        let mut names: Vec<String> = [
            "..",
            ".",
            "../",
            "./",
            "../x.py",
            "../../etc/passwd",
            "../../../../../../etc/passwd",
            "a/../../x.py",
            "a/b/../../../x.py",
            "./../ok.py",
            "ok.py/../../x.py",
            "pkg/..",
            "pkg/../..",
            "/etc/passwd",
            "/",
            "//etc/passwd",
            "/tmp/x.py",
            "~/x.py",
            "~root/.ssh/id_rsa",
            "..\\x.py",
            "a\\..\\..\\x.py",
            "\\etc\\passwd",
            "C:\\Windows\\win.ini",
            "C:/x.py",
            "\\\\server\\share\\x.py",
            "%2e%2e/x.py",
            "%2e%2e%2fx.py",
            "..%2fx.py",
            "%252e%252e/x.py",
            "%c0%ae%c0%ae/x.py",
            "ok%00.py",
            "x\0.py",
            "\0",
            "../x.py\0.py",
            "ok.py\n",
            "a\nb.py",
            "\r../x.py",
            "\t.py",
            "ok.py\u{7f}",
            ".venv/bin/python",
            ".venv/lib/python3.11/site-packages/x.py",
            ".hidden.py",
            "pkg/.git/config",
            "..\u{2215}x.py",
            "..\u{ff0f}x.py",
            "..\u{2044}x.py",
            "file:///etc/passwd",
            "http://evil.example/x.py",
            "a//b.py",
            "pkg/",
            " ../x.py",
            "ok.py ",
            "escape/secret.txt",
            "escape",
            "linkfile.py",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.push("a/".repeat(600) + "x.py");
        names.push("x".repeat(300) + ".py");
        names.push(format!("../{}", outside.file_name().unwrap().to_str().unwrap()));
        names.push(out.clone());
        names.push(format!("{out}/secret.txt"));
        names
    }

    #[test]
    fn a_corpus_of_hostile_names_is_refused_and_nothing_outside_is_read() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("plugins");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(dir.join("ok.py"), "").unwrap();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        // Symlinks inside the directory that point out of it.
        std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), dir.join("linkfile.py")).unwrap();
        let names = hostile(&outside);
        assert!(names.len() >= 50, "{} names", names.len());
        for name in &names {
            match resolve(&dir, name) {
                Err(e) => assert!(
                    matches!(e, PathError::Traversal(_)) && e.to_string().starts_with("Path traversal detected: "),
                    "{name:?}: {e}"
                ),
                Ok(p) => panic!("{name:?} resolved to {}", p.display()),
            }
        }
        assert!(resolve(&dir, "ok.py").is_ok());
        assert!(resolve(&dir, "pkg").is_ok());
        assert!(resolve(&dir, "missing.py").unwrap_err().to_string().contains("not found"));
    }

    #[test]
    fn a_symlink_swapped_in_after_validation_is_caught_when_resolving_again() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.py"), "").unwrap();
        assert!(resolve(&dir, "p.py").is_ok());
        // Swap the checked file for a symlink to a file outside.
        std::fs::write(base.path().join("secret.py"), "").unwrap();
        std::fs::remove_file(dir.join("p.py")).unwrap();
        std::os::unix::fs::symlink(base.path().join("secret.py"), dir.join("p.py")).unwrap();
        assert!(resolve(&dir, "p.py").unwrap_err().to_string().starts_with("Path traversal detected: "));
    }
}
