//! The `lbmesh` binary: parse the command line, set up logging, run.
#![forbid(unsafe_code)]

use clap::Parser;
use lbmesh::cli::{self, Cli, Cmd};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
    let ok = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Serve(args) => ok(cli::serve(*args).await),
            Cmd::Status(args) => ok(cli::status(args).await),
            Cmd::Ca(cmd) => ok(cli::ca(cmd)),
            // The check's exit code is its answer to keepalived.
            Cmd::Keepalived(cmd) => cli::keepalived(cmd).await,
            Cmd::PhoneHome(args) => ok(cli::phone_home(*args).await),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbmesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
