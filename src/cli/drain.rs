//! `lbmesh drain` and `lbmesh undrain`: a planned handoff of the VIP.

use std::time::Duration;

use clap::Args;

use super::ApiArgs;

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Longest wait for connections to finish, e.g. 30s or 5m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct UndrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.timeout <= crate::api::drain::MAX_TIMEOUT,
        "--timeout must be at most {} seconds",
        crate::api::drain::MAX_TIMEOUT.as_secs()
    );
    let path = format!("/v1/drain?timeout={}", args.timeout.as_secs());
    let client = args
        .api
        .client(args.timeout + Duration::from_secs(10), true)?;
    let r: crate::api::drain::DrainResponse = client.post_empty(&path).await?;
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
    let client = args.api.client(Duration::from_secs(10), true)?;
    let _: serde_json::Value = client.post_empty("/v1/undrain").await?;
    println!("undrained: this VM may hold the VIP again");
    Ok(())
}
