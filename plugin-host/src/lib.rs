//! `weir-plugin-host`: owns the plugin directory, the Python venv and the worker
//! processes, and talks to `weir serve` over one bidirectional gRPC stream.
//!
//! This crate is a placeholder until the processing-engine work lands; see README.md.
