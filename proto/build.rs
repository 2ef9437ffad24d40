//! Generates Rust code for the `.proto` files with protox (a pure-Rust protobuf compiler),
//! so building Weir never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not compiled in: checkouts at different paths that share a
    // CARGO_TARGET_DIR may reuse this build script's binary.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos = [root.join("weir/admin/v1/admin.proto"), root.join("weir/plugin/v1/plugin.proto")];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let fds = protox::compile(&protos, [&root])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
