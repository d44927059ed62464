//! `lbmesh drain` and `lbmesh undrain`: a planned handoff of the VIP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::secret::Token;

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
    pub api: String,
    #[arg(long, env = "LBMESH_TOKEN_FILE", default_value = "lbmesh-data/token")]
    pub token_file: PathBuf,
    /// Longest wait for connections to finish, e.g. 30s or 5m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct UndrainArgs {
    #[arg(long, env = "LBMESH_API", default_value = "http://127.0.0.1:9000")]
    pub api: String,
    #[arg(long, env = "LBMESH_TOKEN_FILE", default_value = "lbmesh-data/token")]
    pub token_file: PathBuf,
}

/// POSTs to one of the daemon's own endpoints and returns the JSON answer.
async fn post_api(
    api: &str,
    token_file: &std::path::Path,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let token = Token::load(token_file)
        .with_context(|| "this command needs the API token (--token-file or LBMESH_TOKEN_FILE)")?;
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let resp = super::http_client(timeout)?
        .post(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is lbmesh serve running there?"))?;
    let code = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(code.is_success(), "{url} answered {code}: {body}");
    serde_json::from_str(&body).with_context(|| format!("{url} answered with no JSON: {body}"))
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.timeout <= crate::api::drain::MAX_TIMEOUT,
        "--timeout must be at most {} seconds",
        crate::api::drain::MAX_TIMEOUT.as_secs()
    );
    let path = format!("/v1/drain?timeout={}", args.timeout.as_secs());
    let r: crate::api::drain::DrainResponse = serde_json::from_value(
        post_api(
            &args.api,
            &args.token_file,
            &path,
            args.timeout + Duration::from_secs(10),
        )
        .await?,
    )?;
    println!(
        "drained: {}; VIP held by {}; {} connection(s) left after {:.1} s",
        if r.vip_released {
            "this VM no longer holds the VIP"
        } else {
            "this VM STILL holds the VIP (no peer took it)"
        },
        if r.holders.is_empty() {
            "no live peer".to_string()
        } else {
            r.holders.join(", ")
        },
        r.connections.map_or("unknown".into(), |c| c.to_string()),
        r.waited_ms as f64 / 1000.0
    );
    anyhow::ensure!(
        r.vip_released,
        "the VIP did not leave this VM; no other peer could take it"
    );
    Ok(())
}

pub async fn undrain(args: UndrainArgs) -> anyhow::Result<()> {
    post_api(
        &args.api,
        &args.token_file,
        "/v1/undrain",
        Duration::from_secs(10),
    )
    .await?;
    println!("undrained: this VM may hold the VIP again");
    Ok(())
}
