//! The `lbmesh` binary: parse the command line, set up logging, run.
#![forbid(unsafe_code)]

use clap::Parser;
use lbmesh::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    lbmesh::memory::tune_allocator();
    let cli = Cli::try_parse().unwrap_or_else(|e| cli::usage::exit_with(e));
    if let Err(e) = lbmesh::logging::init_from_env() {
        eprintln!("lbmesh: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbmesh: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbmesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
