//! The environment of worker processes: explicit and minimal, so no secret of the plugin
//! host or of `weir serve` (the session token, `WEIR_ADMIN_TOKEN`, cloud credentials)
//! reaches plugin code.
//!
//! A worker gets exactly:
//!
//! | variable | value |
//! |---|---|
//! | `PATH` | the venv's `bin`, then the host's `PATH` (or `/usr/local/bin:/usr/bin:/bin`) |
//! | `HOME`, `LANG`, `LC_ALL`, `LC_CTYPE` | the host's, when set |
//! | `TZ` | the host's, else `UTC` |
//! | `VIRTUAL_ENV`, `PLUGIN_DIR` | the venv and the plugin directory (plugins read them) |
//! | `PYTHONPATH`, `PYTHONUNBUFFERED` | the worker runtime; unbuffered output |
//! | `INFLUXDB3_*` | the host's (plugins read `INFLUXDB3_AUTH_TOKEN` and friends) |
//! | what `--plugin-env` names | the host's value: `NAME`, or `PREFIX*` for every variable starting with `PREFIX` |
//! | `WEIR_IPC_FD` | the worker's end of its channel (a descriptor number) |
//!
//! `--plugin-env` refuses `WEIR_*` names: those are Weir's own settings and secrets.

use std::path::Path;

/// Variables passed through from the host when set.
const PASSED: &[&str] = &["HOME", "LANG", "LC_ALL", "LC_CTYPE"];
/// The prefix of variables plugins written for InfluxDB 3 read.
const INFLUXDB3_PREFIX: &str = "INFLUXDB3_";

/// Check the operator's `--plugin-env` names.
pub fn check_allowed(names: &[String]) -> Result<(), String> {
    for n in names {
        let bare = n.strip_suffix('*').unwrap_or(n);
        if bare.is_empty() || !bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("--plugin-env {n:?}: expected a variable name, or a prefix followed by '*'"));
        }
        if bare.to_ascii_uppercase().starts_with("WEIR") {
            return Err(format!(
                "--plugin-env {n:?}: WEIR_* variables are Weir's own settings and secrets and never reach plugins"
            ));
        }
    }
    Ok(())
}

fn allowed(name: &str, allow: &[String]) -> bool {
    name.starts_with(INFLUXDB3_PREFIX)
        || allow.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == a,
        })
}

/// The environment of a worker, from the host's `vars` (normally `std::env::vars()`).
pub fn worker_environment(
    vars: impl IntoIterator<Item = (String, String)>,
    venv: &Path,
    plugin_dir: &Path,
    runtime_dir: &Path,
    allow: &[String],
) -> Vec<(String, String)> {
    let mut host_path = None;
    let mut tz = None;
    let mut out = Vec::new();
    for (k, v) in vars {
        match k.as_str() {
            "PATH" => host_path = Some(v),
            "TZ" => tz = Some(v),
            _ if k.starts_with("WEIR") => {}
            _ if PASSED.contains(&k.as_str()) || allowed(&k, allow) => out.push((k, v)),
            _ => {}
        }
    }
    let bin = venv.join("bin");
    let path = format!("{}:{}", bin.display(), host_path.as_deref().unwrap_or("/usr/local/bin:/usr/bin:/bin"));
    out.extend([
        ("PATH".to_string(), path),
        ("TZ".to_string(), tz.unwrap_or_else(|| "UTC".to_string())),
        ("VIRTUAL_ENV".to_string(), venv.display().to_string()),
        ("PLUGIN_DIR".to_string(), plugin_dir.display().to_string()),
        ("PYTHONPATH".to_string(), runtime_dir.display().to_string()),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ]);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_and_plugins_get_what_they_read() {
        let host: Vec<(String, String)> = [
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/weir"),
            ("WEIR_PLUGIN_HOST_TOKEN", "secret1"),
            ("WEIR_ADMIN_TOKEN", "secret2"),
            ("AWS_SECRET_ACCESS_KEY", "secret3"),
            ("INFLUXDB3_AUTH_TOKEN", "apiv3_x"),
            ("MY_API_KEY", "k"),
            ("OTEL_ENDPOINT", "http://o"),
            ("OTEL_SERVICE", "s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = worker_environment(
            host,
            Path::new("/p/.venv"),
            Path::new("/p"),
            Path::new("/p/.venv/weir-runtime"),
            &["MY_API_KEY".to_string(), "OTEL_*".to_string()],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/p/.venv/bin:/usr/bin:/bin"));
        assert_eq!(get("TZ"), Some("UTC"));
        assert_eq!(get("PLUGIN_DIR"), Some("/p"));
        assert_eq!(get("INFLUXDB3_AUTH_TOKEN"), Some("apiv3_x"));
        assert_eq!(get("MY_API_KEY"), Some("k"));
        assert_eq!(get("OTEL_SERVICE"), Some("s"));
        for secret in ["WEIR_PLUGIN_HOST_TOKEN", "WEIR_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY"] {
            assert_eq!(get(secret), None, "{secret}");
        }
        assert!(!env.iter().any(|(_, v)| v.starts_with("secret")));
        assert!(check_allowed(&["WEIR_ADMIN_TOKEN".to_string()]).is_err());
        assert!(check_allowed(&["WEIR*".to_string()]).is_err());
        assert!(check_allowed(&["a b".to_string()]).is_err());
        assert!(check_allowed(&["OTEL_*".to_string(), "X".to_string()]).is_ok());
    }
}
