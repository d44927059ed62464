//! The command line: `lbmesh serve`, `lbmesh status`, and friends; one
//! module per command, output formatting apart from I/O.

mod ca;
mod docs;
mod drain;
mod format;
mod keepalived;
mod phone_home;
mod serve;
mod status;
mod target;
pub mod usage;

pub use ca::{CaCmd, CaInitArgs, CaIssueArgs, ca};
pub use docs::{CompletionsArgs, ManPagesArgs, completions, man_pages, render_man_pages};
pub use drain::{DrainArgs, UndrainArgs, drain, undrain};
pub use format::format_status;
pub use keepalived::{KeepalivedCmd, KeepalivedConfigArgs, keepalived};
pub use phone_home::phone_home;
pub use serve::{ServeArgs, serve};
pub use status::{StatusArgs, status};
pub use target::{ApiArgs, absolute};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lbmesh",
    version,
    about = "A mesh of redundant HAProxy load balancers fed by phone-home calls",
    long_about = "A mesh of redundant HAProxy load balancers fed by phone-home calls.\n\n\
        Every load-balancer VM runs lbmesh serve: it takes the original phone-home \
        call (POST /hooks/update-haproxy) on any VM, replicates the registry of \
        backends to every other VM by gossip, and serves it through its HAProxy; \
        keepalived moves a floating IP to a healthy VM through lbmesh keepalived. \
        lbmesh phone-home is the client."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon: phone-home API, registry, HAProxy.
    Serve(Box<ServeArgs>),
    /// Show this peer (and the mesh it sees) as a table.
    Status(StatusArgs),
    /// Hand the VIP to a peer and wait for this VM's connections to finish;
    /// the VM takes the VIP no more (also after a restart) until undrained.
    Drain(DrainArgs),
    /// Let a drained VM hold the VIP again.
    Undrain(UndrainArgs),
    /// Register a NodePort with the mesh and keep it registered: a drop-in for
    /// the original phone-home container (same environment variables).
    PhoneHome(Box<crate::phone_home::PhoneHomeArgs>),
    /// Integration with keepalived: health check, notify hook, config.
    #[command(subcommand)]
    Keepalived(KeepalivedCmd),
    /// The cluster certificate authority for peer links.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Print a shell completion script, e.g. for bash:
    /// lbmesh completions bash > /etc/bash_completion.d/lbmesh
    Completions(CompletionsArgs),
    /// Write the man pages into a directory (used to build the package).
    #[command(hide = true)]
    ManPages(ManPagesArgs),
}

/// Runs one command; returns the process exit code.
pub async fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match command {
        Cmd::Serve(args) => ok(serve(*args).await),
        Cmd::Status(args) => ok(status(args).await),
        Cmd::Drain(args) => ok(drain(args).await),
        Cmd::Undrain(args) => ok(undrain(args).await),
        Cmd::Ca(cmd) => ok(ca(cmd)),
        // The check's exit code is its answer to keepalived.
        Cmd::Keepalived(cmd) => keepalived(cmd).await,
        Cmd::PhoneHome(args) => ok(phone_home(*args).await),
        Cmd::Completions(args) => ok(completions(args)),
        Cmd::ManPages(args) => ok(man_pages(args)),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
