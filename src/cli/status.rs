//! `lbmesh status`: fetch this peer's status and print it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::secret::Token;
use crate::status::NodeStatus;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The peer's API.
    #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
    pub api: String,
    /// The API token file.
    #[arg(long, env = "LBMESH_TOKEN_FILE", default_value = "lbmesh-data/token")]
    pub token_file: PathBuf,
    /// Print the JSON status instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let token = Token::load(&args.token_file)
        .with_context(|| "lbmesh status needs the API token (--token-file or LBMESH_TOKEN_FILE)")?;
    let url = format!("{}/v1/status", args.api.trim_end_matches('/'));
    let resp = super::http_client(Duration::from_secs(10))?
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is lbmesh serve running there?"))?;
    if !resp.status().is_success() {
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {code}: {body}");
    }
    let status: NodeStatus = resp.json().await.context("unexpected status format")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", super::format::format_status(&status));
    }
    Ok(())
}
