//! The `recast` binary.

fn main() -> std::process::ExitCode {
    recast::cli::main()
}
