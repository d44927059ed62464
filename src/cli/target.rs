//! How a client command finds the daemon's API: from the daemon's config
//! file (the one `lbmesh serve` runs on), with flags on top.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::client::{ApiClient, ApiTarget, DEFAULT_CONFIG};
use crate::config::{FileConfig, Overrides, Settings};

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The daemon's config file; the API address and scheme, the token file
    /// and the certificate to trust come from it [default: /etc/lbmesh/lbmesh.toml if it exists].
    #[arg(long, env = "LBMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The API URL, e.g. https://198.18.0.11:9000 (overrides the config).
    #[arg(long, env = "LBMESH_API", value_name = "URL")]
    pub api: Option<String>,
    /// The API token file (overrides the config).
    #[arg(long, env = "LBMESH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA or certificate (PEM) for HTTPS [default: from the config, else the system roots and SSL_CERT_FILE].
    #[arg(long, env = "LBMESH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// A path made absolute against the current directory.
pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .context("the current directory")?
            .join(p)
    })
}

impl ApiArgs {
    /// The config file to read: the one given, else the default one when
    /// it exists; absolute.
    pub fn config_file(&self) -> anyhow::Result<Option<PathBuf>> {
        match &self.config {
            Some(c) => Ok(Some(absolute(c)?)),
            None => {
                let d = Path::new(DEFAULT_CONFIG);
                Ok(d.exists().then(|| d.to_owned()))
            }
        }
    }

    /// The daemon's settings: from its config file, or the embedded
    /// defaults (those of `lbmesh serve` run here without a config) when
    /// there is none. Relative paths in it are taken from the current
    /// directory, as `lbmesh serve` takes them.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let cwd = std::env::current_dir().context("the current directory")?;
        let file = match self.config_file()? {
            Some(p) => FileConfig::load(&p)?,
            None => FileConfig::default(),
        };
        Settings::resolve(file, Overrides::default(), &cwd)
            .context("reading the daemon's config to find its API")
    }

    /// Where the API is and how to trust and authenticate to it: the
    /// config's local API, with each flag given replacing its part.
    pub fn target(&self) -> anyhow::Result<ApiTarget> {
        let settings = self.settings()?;
        let mut t = match &self.api {
            Some(api) => {
                // Another URL: the config's token and CA still apply.
                let mut t = ApiTarget::url(api)?;
                t.token_file = Some(settings.token_file.clone());
                t.ca = crate::client::trusted_ca(&settings);
                t
            }
            None => ApiTarget::local(&settings)?,
        };
        if let Some(f) = &self.token_file {
            t.token_file = Some(absolute(f)?);
        }
        if let Some(ca) = &self.ca {
            t.ca = Some(absolute(ca)?);
        }
        Ok(t)
    }

    /// A client for the API; `with_token` loads the token now.
    pub fn client(&self, timeout: Duration, with_token: bool) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(self.target()?, timeout, with_token)?)
    }

    /// The arguments that lead a command run elsewhere (by keepalived,
    /// from `/`, with none of this shell's variables) to the same daemon
    /// the same way: `--config` with an absolute path when a config is
    /// read, else the derived URL and token file; and each flag given.
    pub fn as_args(&self) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        let config = self.config_file()?;
        if let Some(c) = &config {
            args.push("--config".to_owned());
            args.push(c.display().to_string());
        }
        let target = self.target()?;
        match (&self.api, &config) {
            (Some(api), _) => {
                args.push("--api".to_owned());
                args.push(api.clone());
            }
            // Nothing to read at run time: write down what was derived.
            (None, None) => {
                args.push("--api".to_owned());
                args.push(target.base());
            }
            (None, Some(_)) => {}
        }
        let token = match (&self.token_file, &config) {
            (Some(f), _) => Some(absolute(f)?),
            (None, None) => target.token_file.clone(),
            (None, Some(_)) => None,
        };
        if let Some(t) = token {
            args.push("--token-file".to_owned());
            args.push(t.display().to_string());
        }
        if let Some(ca) = &self.ca {
            args.push("--ca".to_owned());
            args.push(absolute(ca)?.display().to_string());
        }
        Ok(args)
    }
}
