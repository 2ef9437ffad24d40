//! Weir's wire formats: the versioned protobuf packages shared by the `weir` CLI,
//! `weir serve` (db-core) and the plugin host, plus the few constants and rules both ends
//! of the plugin session must agree on. Generated at build time by protox, so no system
//! `protoc` is needed.

pub mod plugin_name;

/// `weir.admin.v1`: the administrative service used by the `weir` CLI.
pub mod admin {
    /// Version 1 of the admin service.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("weir.admin.v1");
    }
}

/// `weir.plugin.v1`: the stream between `weir serve` and `weir-plugin-host`.
pub mod plugin {
    /// Version 1 of the plugin-host channel.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("weir.plugin.v1");
    }
}

/// Largest gRPC message either end of the plugin session sends or accepts, and the largest
/// frame between the plugin host and a worker: 256 MiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The line `weir-plugin-host` prints on stdout once it listens, followed by its URL
/// (`http://ADDR`); `weir serve` reads it to connect to a host it started.
pub const HOST_READY_PREFIX: &str = "Weir plugin host listening on ";

/// Environment variable holding the plugin session token on both sides. A host `weir serve`
/// starts gets a fresh one this way (never on the command line, where `ps` shows it).
pub const HOST_TOKEN_ENV: &str = "WEIR_PLUGIN_HOST_TOKEN";
