//! The `weir-plugin-host` binary (placeholder).

fn main() {
    eprintln!("weir-plugin-host: the processing engine is not implemented yet");
    std::process::exit(2);
}
