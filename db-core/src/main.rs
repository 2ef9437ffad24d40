//! The `weir` binary: see [`db_core::cli`].

fn main() {
    if let Err(e) = db_core::cli::startup() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
