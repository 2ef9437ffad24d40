//! The `weir-plugin-host` binary.

fn main() -> std::process::ExitCode {
    plugin_host::cli::main()
}
