//! Weir's wire formats: the versioned protobuf packages shared by the `weir` CLI,
//! `weir serve` (db-core) and the plugin host. Generated at build time by protox, so no
//! system `protoc` is needed.

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
