//! The plugin directory's files: listing them (`system.plugin_files`) and writing uploads.
//!
//! Writes are atomic: a single file is written to a hidden temporary file beside its
//! target, synced, then renamed over it; a directory is written in full to a hidden
//! temporary directory, then swapped in (the old one renamed aside first, and back if the
//! swap fails). Names are checked by [`crate::paths::check_name`]; every existing
//! ancestor of the target must really lie inside the plugin directory, and the target must
//! not be a symlink, so no upload writes outside it.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use weir_proto::plugin::v1::{self as pb, put_plugin::Mode};

use crate::paths::check_name;

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A bad name (traversal, not a `.py` file, ...).
    #[error("{0}")]
    Invalid(String),
    /// `CREATE` of something that exists (or a file where a directory is, or back).
    #[error("{0}")]
    Exists(String),
    /// `REPLACE` of something that does not exist.
    #[error("{0}")]
    Missing(String),
    /// The filesystem failed.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let msg = format!("{what} {}", path.display());
    move |e| FileError::Io(format!("{msg}: {e}"))
}

fn millis(meta: &std::fs::Metadata) -> i64 {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64)
}

/// The entries of `dir` worth listing, sorted by name, with their real paths: hidden names
/// (`.venv`, temporary uploads) and `__pycache__` skipped, and anything whose real path
/// leaves `root` (a symlink pointing out) left out.
fn entries(root: &Path, dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "__pycache__" {
                return None;
            }
            let real = e.path().canonicalize().ok().filter(|r| r.starts_with(root))?;
            Some((name, real))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn row(plugin: &str, file: String, real: &Path) -> Option<pb::PluginFile> {
    let meta = std::fs::metadata(real).ok()?;
    Some(pb::PluginFile {
        plugin_name: plugin.to_string(),
        file_name: file,
        file_path: real.display().to_string(),
        size_bytes: meta.len(),
        last_modified_ms: millis(&meta),
    })
}

/// Every file of every plugin: top-level `.py` files and the files of top-level
/// directories (symlinks only when they stay inside the plugin directory).
pub fn list(plugin_dir: &Path) -> Result<Vec<pb::PluginFile>, String> {
    let root = plugin_dir.canonicalize().map_err(|e| format!("plugin directory {}: {e}", plugin_dir.display()))?;
    let mut out = Vec::new();
    for (name, real) in entries(&root, &root).map_err(|e| e.to_string())? {
        if real.is_dir() {
            walk(&root, &real, &name, Path::new(""), &mut out);
        } else if name.ends_with(".py") {
            out.extend(row(&name, name.clone(), &real));
        }
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, plugin: &str, rel: &Path, out: &mut Vec<pb::PluginFile>) {
    for (name, real) in entries(root, dir).unwrap_or_default() {
        let rel = rel.join(&name);
        if real.is_dir() {
            // Depth is bounded; a symlink loop fails canonicalize.
            if rel.components().count() < 32 {
                walk(root, &real, plugin, &rel, out);
            }
        } else {
            out.extend(row(plugin, rel.display().to_string(), &real));
        }
    }
}

/// Where `name` goes inside `plugin_dir`, creating missing parent directories. Refuses a
/// name whose existing parts leave the plugin directory, or whose target is a symlink.
fn target(plugin_dir: &Path, name: &str) -> Result<PathBuf, FileError> {
    let rel = check_name(name).map_err(FileError::Invalid)?;
    let root = plugin_dir.canonicalize().map_err(io("plugin directory", plugin_dir))?;
    let path = root.join(rel);
    let parent = path.parent().expect("a joined name has a parent");
    // The deepest existing ancestor must really be inside.
    let mut existing = parent;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(&root);
    }
    let real = existing.canonicalize().map_err(io("resolving", existing))?;
    if !real.starts_with(&root) {
        return Err(FileError::Invalid(format!("Path traversal detected: {name}")));
    }
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    if parent.canonicalize().map_err(io("resolving", parent))? != parent {
        return Err(FileError::Invalid(format!("Path traversal detected: {name}")));
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(FileError::Invalid(format!("Path traversal detected: {name}")));
    }
    Ok(path)
}

fn temp_name(parent: &Path, what: &str) -> PathBuf {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    parent.join(format!(".weir-{what}-{}", hex::encode(bytes)))
}

fn write_synced(path: &Path, content: &[u8]) -> Result<(), FileError> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io("creating", path))?;
    f.write_all(content).map_err(io("writing", path))?;
    f.sync_all().map_err(io("syncing", path))
}

fn check_mode(path: &Path, name: &str, mode: Mode) -> Result<(), FileError> {
    let exists = path.exists();
    match mode {
        Mode::Create if exists => Err(FileError::Exists(format!("plugin {name} already exists"))),
        Mode::Replace if !exists => Err(FileError::Missing(format!("plugin {name} does not exist"))),
        _ => Ok(()),
    }
}

/// Write a plugin: one `.py` file, or a whole directory (swapped in atomically).
pub fn put(plugin_dir: &Path, req: &pb::PutPlugin) -> Result<(), FileError> {
    let mode = Mode::try_from(req.mode).unwrap_or(Mode::CreateOrReplace);
    let name = req.plugin_name.trim_end_matches('/');
    // Everything about the request is checked before anything is created on disk.
    check_name(name).map_err(FileError::Invalid)?;
    if req.directory {
        if req.files.is_empty() {
            return Err(FileError::Invalid("a plugin directory needs at least one file".to_string()));
        }
        if !req.files.iter().any(|f| f.relative_path == "__init__.py") {
            return Err(FileError::Invalid(format!("plugin directory {name} needs an __init__.py")));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &req.files {
            check_name(&f.relative_path).map_err(FileError::Invalid)?;
            if !seen.insert(f.relative_path.as_str()) {
                return Err(FileError::Invalid(format!("{} is given twice", f.relative_path)));
            }
        }
    } else {
        if !name.ends_with(".py") {
            return Err(FileError::Invalid(format!(
                "plugin file {name} must end in .py (upload a directory for a package)"
            )));
        }
        if req.files.len() != 1 {
            return Err(FileError::Invalid(format!(
                "a plugin file takes exactly one content, got {}",
                req.files.len()
            )));
        }
    }
    let path = target(plugin_dir, name)?;
    let parent = path.parent().expect("checked").to_path_buf();
    check_mode(&path, name, mode)?;
    if !req.directory {
        if path.is_dir() {
            return Err(FileError::Exists(format!("{name} is a directory")));
        }
        let tmp = temp_name(&parent, "upload");
        write_synced(&tmp, &req.files[0].content)?;
        return std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            FileError::Io(format!("replacing {}: {e}", path.display()))
        });
    }
    if path.exists() && !path.is_dir() {
        return Err(FileError::Exists(format!("{name} is a file")));
    }
    // Build the new tree beside the old one.
    let tmp = temp_name(&parent, "upload");
    let built = (|| {
        std::fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        for f in &req.files {
            let rel = check_name(&f.relative_path).map_err(FileError::Invalid)?;
            let dest = tmp.join(rel);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(io("creating", p))?;
            }
            write_synced(&dest, &f.content)?;
        }
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Swap: old aside, new in, old removed; back on failure.
    let old = temp_name(&parent, "old");
    let had_old = path.exists();
    if had_old {
        std::fs::rename(&path, &old).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            FileError::Io(format!("moving {} aside: {e}", path.display()))
        })?;
    }
    if let Err(e) = std::fs::rename(&tmp, &path) {
        if had_old {
            let _ = std::fs::rename(&old, &path);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(FileError::Io(format!("swapping in {}: {e}", path.display())));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> pb::FileContent {
        pb::FileContent { relative_path: String::new(), content: content.as_bytes().to_vec() }
    }

    fn put_file(dir: &Path, name: &str, content: &str, mode: Mode) -> Result<(), FileError> {
        put(
            dir,
            &pb::PutPlugin {
                plugin_name: name.into(),
                files: vec![file(content)],
                directory: false,
                mode: mode as i32,
            },
        )
    }

    #[test]
    fn files_are_created_replaced_and_listed() {
        let d = tempfile::tempdir().unwrap();
        put_file(d.path(), "a.py", "one", Mode::Create).unwrap();
        assert!(matches!(put_file(d.path(), "a.py", "two", Mode::Create), Err(FileError::Exists(_))));
        put_file(d.path(), "a.py", "two", Mode::Replace).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("a.py")).unwrap(), "two");
        assert!(matches!(put_file(d.path(), "b.py", "x", Mode::Replace), Err(FileError::Missing(_))));
        assert!(matches!(put_file(d.path(), "notpython.txt", "x", Mode::Create), Err(FileError::Invalid(_))));
        let files = |names: &[&str]| {
            names
                .iter()
                .map(|n| pb::FileContent { relative_path: n.to_string(), content: n.as_bytes().to_vec() })
                .collect()
        };
        let pkg = |names: &[&str], mode: Mode| pb::PutPlugin {
            plugin_name: "pkg".into(),
            files: files(names),
            directory: true,
            mode: mode as i32,
        };
        put(d.path(), &pkg(&["__init__.py", "util/helpers.py"], Mode::Create)).unwrap();
        put(d.path(), &pkg(&["__init__.py", "new.py"], Mode::Replace)).unwrap();
        assert!(!d.path().join("pkg/util").exists(), "the old tree is gone");
        assert!(matches!(put(d.path(), &pkg(&["helpers.py"], Mode::Replace)), Err(FileError::Invalid(_))));
        // A failed replace (a bad file name inside) leaves the old tree in place.
        assert!(put(d.path(), &pkg(&["__init__.py", "../escape.py"], Mode::Replace)).is_err());
        assert!(d.path().join("pkg/new.py").exists());
        let listed: Vec<(String, String)> =
            list(d.path()).unwrap().into_iter().map(|f| (f.plugin_name, f.file_name)).collect();
        assert_eq!(
            listed,
            [("a.py", "a.py"), ("pkg", "__init__.py"), ("pkg", "new.py")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // A rejected upload creates nothing (not even its parent directories).
        assert!(matches!(put_file(d.path(), "new/dir/x.txt", "x", Mode::Create), Err(FileError::Invalid(_))));
        assert!(!d.path().join("new").exists());
        let twice = pb::PutPlugin {
            plugin_name: "p2".into(),
            files: files(&["__init__.py", "__init__.py"]),
            directory: true,
            mode: 0,
        };
        assert!(matches!(put(d.path(), &twice), Err(FileError::Invalid(_))));
        // No temporary files are left behind.
        assert!(
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(".weir-"))
        );
    }

    #[test]
    fn uploads_never_write_outside_the_plugin_dir() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("plugins");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("t.py"), dir.join("link.py")).unwrap();
        for name in ["../x.py", "/tmp/x.py", "escape/x.py", "link.py", ".venv/x.py", "a/../../x.py"] {
            let e = put_file(&dir, name, "x", Mode::CreateOrReplace).unwrap_err();
            assert!(e.to_string().starts_with("Path traversal detected: "), "{name}: {e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
