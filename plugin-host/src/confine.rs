//! Filesystem confinement of worker processes with Landlock (Linux 5.13+), applied between
//! fork and exec, so plugin code can reach only what it needs:
//!
//! | path | access |
//! |---|---|
//! | the plugin directory (its `.venv` included; workers get `HOME=<plugin-dir>/.home` and `TMPDIR=<plugin-dir>/.tmp`) | read, write, create, execute |
//! | `/dev/shm` (shared memory, semaphores) | read, write, create |
//! | `/dev` | read and write existing files (`/dev/null`, `/dev/urandom`) |
//! | `/usr`, `/lib`, `/lib64`, `/bin`, `/sbin`, `/etc`, `/opt`, `/sys`, `/proc/self`, the interpreter's installation | read, execute |
//!
//! Everything else — the database's data directory, its catalog and WAL, other processes'
//! `/proc` entries (their environment and memory), the user's home directory, `/tmp` — is
//! refused with `PermissionError`. Network access is not restricted. On a kernel without Landlock the host
//! logs one warning and runs workers unconfined.
//!
//! The rules are made by the worker itself (`pre_exec`): only raw system calls on paths
//! prepared beforehand, nothing that allocates.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

// Landlock ABI (include/uapi/linux/landlock.h).
const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const READ: u64 = EXECUTE | READ_FILE | READ_DIR;
const READ_WRITE_FILES: u64 = READ_FILE | WRITE_FILE | READ_DIR | TRUNCATE | IOCTL_DEV;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// What the kernel supports, found once.
fn abi() -> i64 {
    // SAFETY: a query call (NULL attributes, version flag) that changes nothing.
    unsafe { libc::syscall(SYS_CREATE_RULESET, std::ptr::null::<RulesetAttr>(), 0usize, CREATE_RULESET_VERSION) }
}

/// The rights this kernel handles (newer ABIs add some).
fn handled(abi: i64) -> u64 {
    let mut all = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        all |= REFER;
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// The rules for a worker, prepared in the host (paths as C strings), applied in the child.
#[derive(Debug, Clone)]
pub struct Confinement {
    handled: u64,
    rules: Vec<(CString, u64)>,
}

impl Confinement {
    /// Rules for workers of `plugin_dir`, whose interpreter lives under `python_prefixes`;
    /// `None` (with a warning) when the kernel has no Landlock.
    pub fn for_workers(plugin_dir: &Path, python_prefixes: &[PathBuf]) -> Option<Self> {
        let abi = abi();
        if abi < 1 {
            tracing::warn!(
                "this kernel has no Landlock: plugin workers run unconfined (they can read whatever this \
                 process's user can)"
            );
            return None;
        }
        let handled = handled(abi);
        let mut rules: Vec<(PathBuf, u64)> = vec![(plugin_dir.to_path_buf(), handled)];
        rules.push((PathBuf::from("/dev/shm"), handled & !(EXECUTE | MAKE_CHAR | MAKE_BLOCK)));
        rules.push((PathBuf::from("/dev"), READ_WRITE_FILES & handled));
        for ro in ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/sys"] {
            rules.push((PathBuf::from(ro), READ));
        }
        rules.extend(python_prefixes.iter().map(|p| (p.clone(), READ)));
        let rules = rules
            .into_iter()
            .filter(|(p, _)| p.exists())
            .filter_map(|(p, access)| Some((CString::new(p.as_os_str().as_bytes()).ok()?, access & handled)))
            .collect();
        tracing::info!(abi, "plugin workers are confined with Landlock");
        Some(Self { handled, rules })
    }

    /// Apply the rules to the calling process (between fork and exec: system calls only).
    ///
    /// # Safety
    /// Call only in a freshly forked child before exec: it restricts the calling process
    /// for good.
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        let attr = RulesetAttr { handled_access_fs: self.handled };
        // SAFETY: valid pointer and size; the fd is closed below.
        let ruleset = unsafe {
            libc::syscall(SYS_CREATE_RULESET, &attr as *const RulesetAttr, std::mem::size_of::<RulesetAttr>(), 0u32)
        };
        if ruleset < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ruleset = ruleset as i32;
        let add = |path: *const libc::c_char, access: u64| -> std::io::Result<()> {
            // SAFETY: a NUL-terminated path; O_PATH opens nothing for reading.
            let fd = unsafe { libc::open(path, libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                // Gone since the rules were made: nothing to allow.
                return Ok(());
            }
            let rule = PathBeneathAttr { allowed_access: access, parent_fd: fd };
            // SAFETY: valid rule and fds.
            let r = unsafe {
                libc::syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, &rule as *const PathBeneathAttr, 0u32)
            };
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        };
        let mut result = Ok(());
        for (path, access) in &self.rules {
            result = result.and_then(|()| add(path.as_ptr(), *access));
        }
        // This process's own /proc entry (Python reads it; other processes' stay closed).
        result = result.and_then(|()| add(c"/proc/self".as_ptr(), READ_FILE | READ_DIR));
        result = result.and_then(|()| {
            // SAFETY: plain prctl and syscall on our own process.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(SYS_RESTRICT_SELF, ruleset, 0u32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
        // SAFETY: our own fd.
        unsafe { libc::close(ruleset) };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confined child reads what it is allowed and gets EACCES for the rest (skipped on
    /// a kernel without Landlock).
    #[test]
    fn a_confined_process_reaches_only_what_it_is_allowed() {
        let allowed = tempfile::tempdir().unwrap();
        // Beside the test, not in /tmp (whose contents are refused too, but keep it plain).
        let secret = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::fs::write(allowed.path().join("mine.txt"), "ok").unwrap();
        std::fs::write(secret.path().join("catalog.json"), "secret").unwrap();
        let Some(c) = Confinement::for_workers(allowed.path(), &[]) else { return };
        let script = format!(
            "cat {}/mine.txt && echo made > {}/new.txt && ! cat {}/catalog.json 2>/dev/null && echo refused",
            allowed.path().display(),
            allowed.path().display(),
            secret.path().display()
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", &script]);
        // SAFETY: only system calls happen in the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || c.apply());
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text, "okrefused\n");
        assert_eq!(std::fs::read_to_string(allowed.path().join("new.txt")).unwrap(), "made\n");
    }
}
