//! `lbmesh status`: fetch this peer's status and print it.

use std::time::Duration;

use clap::Args;

use crate::status::NodeStatus;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: super::ApiArgs,
    /// Print the JSON status instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.api.client(Duration::from_secs(10), true)?;
    let status: NodeStatus = client.get("/v1/status").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", super::format::format_status(&status));
    }
    Ok(())
}
