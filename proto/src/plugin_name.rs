//! The syntax of plugin names: a trigger's `plugin_filename`, a requirements file, an
//! upload. Both ends check it: `weir serve` refuses a bad name when a trigger is created
//! (so nothing unusable is stored), the plugin host again before it touches the disk (it
//! also resolves the name on disk and refuses symlinks leading out of the plugin
//! directory, which only it can see).
//!
//! A name is a plain relative path of ordinary components: no `..` or `.`, no hidden
//! component (which also protects `.venv`), no absolute path, backslash, `%`
//! (percent-encoded tricks), NUL or other control character, `~`, URL or drive letter,
//! no empty component, nothing over [`MAX_NAME`] bytes. Every refusal reads
//! `Path traversal detected: <name>`, as InfluxDB 3 words it.
//!
//! `gh:<path>` names a file of the plugin repository; its path follows the same rules and
//! may only use URL-safe characters (letters, digits, `.`, `_`, `-`, `/`), so the URL
//! fetched and the name cached are the same.

use std::path::{Component, Path};

/// Longest accepted name, bytes.
pub const MAX_NAME: usize = 1024;
/// Longest accepted path component, bytes.
const MAX_COMPONENT: usize = 255;
/// The prefix of plugins fetched from the plugin repository.
pub const GH_PREFIX: &str = "gh:";

/// `Path traversal detected: <name>` (control characters escaped so logs stay readable).
pub fn traversal(name: &str) -> String {
    format!("Path traversal detected: {}", name.escape_debug())
}

/// Check a plugin-relative name without touching the disk.
pub fn check_name(name: &str) -> Result<&Path, String> {
    let refuse = || Err(traversal(name));
    if name.is_empty() || name.len() > MAX_NAME {
        return refuse();
    }
    if name.chars().any(|c| c.is_control() || matches!(c, '\\' | '%' | '\u{2215}' | '\u{2044}' | '\u{ff0f}')) {
        return refuse();
    }
    if name.starts_with('~')
        || name.contains("://")
        || name.contains(':') && name.len() > 1 && name.as_bytes()[1] == b':'
    {
        return refuse();
    }
    let path = Path::new(name);
    for c in path.components() {
        match c {
            Component::Normal(part) => {
                let part = part.to_str().unwrap_or("");
                if part.is_empty() || part.len() > MAX_COMPONENT || part.starts_with('.') || part.trim() != part {
                    return refuse();
                }
            }
            _ => return refuse(),
        }
    }
    // `a//b` and a trailing `/` collapse in `components()`: refuse them too.
    if name.contains("//") || name.ends_with('/') {
        return refuse();
    }
    Ok(path)
}

/// `Some(path)` for a `gh:<path>` name.
pub fn gh_path(name: &str) -> Option<&str> {
    name.strip_prefix(GH_PREFIX)
}

/// Check the path of a `gh:` plugin: a plugin name of URL-safe characters only.
pub fn check_gh_path(path: &str) -> Result<&Path, String> {
    let rel = check_name(path)?;
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return Err(format!("gh:{path}: only letters, digits, '.', '_', '-' and '/' are allowed in a repository path"));
    }
    if !path.ends_with(".py") {
        return Err(format!("gh:{path}: only single .py files can be fetched from the plugin repository"));
    }
    Ok(rel)
}

/// Check a trigger's `plugin_filename`: a plugin name, or `gh:` and a repository path.
pub fn check_plugin_filename(name: &str) -> Result<(), String> {
    match gh_path(name) {
        Some(path) => check_gh_path(path).map(|_| ()),
        None => check_name(name).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_escapes_are_refused() {
        for ok in ["a.py", "dir/b.py", "pkg", "gh:examples/wal_plugin/wal_plugin.py"] {
            assert!(check_plugin_filename(ok).is_ok(), "{ok}");
        }
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../b.py", ".venv/x.py", "", "a\\b.py", "gh:../x.py"] {
            let e = check_plugin_filename(bad).unwrap_err();
            assert!(e.contains("Path traversal detected"), "{bad}: {e}");
        }
        assert!(check_plugin_filename("gh:a b.py").unwrap_err().contains("only letters"));
        assert!(check_plugin_filename("gh:dir/pkg").unwrap_err().contains("single .py"));
    }
}
