//! `weir-plugin-host`: owns the plugin directory, the Python venv and the worker
//! processes, and serves `weir serve` over one bidirectional gRPC stream
//! (`weir.plugin.v1.PluginHost/Session`).
//!
//! - [`venv`]: `<plugin-dir>/.venv`, checked against the interpreter, with the embedded
//!   `weir_plugin` runtime installed into it;
//! - [`worker`]: one Python process per trigger on a private socket;
//! - [`marshal`]: Arrow batches → Python objects for `process_writes` and query answers;
//! - [`host`]: triggers, the session with the core, the link for plugin queries and writes;
//! - [`cache`]: the global plugin cache;
//! - [`packages`]: pip/uv installs into the venv;
//! - [`paths`]: validation of every plugin path a user gives;
//! - [`files`]: listing the plugin directory and atomic uploads;
//! - [`gh`]: `gh:` plugins fetched from the plugin repository, cached with their sha256.

pub mod cache;
pub mod cli;
pub mod confine;
pub mod env;
pub mod files;
pub mod forkserver;
pub mod gh;
pub mod host;
pub mod marshal;
pub mod packages;
pub mod paths;
pub mod venv;
pub mod worker;
