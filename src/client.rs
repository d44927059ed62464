//! The one client of lbmesh's own API, for every command that calls it
//! (`lbmesh status`, `lbmesh keepalived check|notify|config`) and for
//! `lbmesh phone-home`. One TLS policy: the server's certificate is always
//! verified, against a pinned CA or certificate when one is given, else the
//! system roots (which honour `SSL_CERT_FILE`); a token is only ever sent
//! over a verified connection or plain HTTP. Where the daemon is comes from
//! its config file, so a client finds it the way the daemon was set up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ApiTls, GossipTls, Settings};
use crate::secret::{Token, TokenError};

/// Where the config is looked for when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/lbmesh/lbmesh.toml";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "{url}: lbmesh answers over HTTPS there, not plain HTTP; use https:// (or --config with the daemon's config)"
    )]
    WantsHttps { url: Url },
    #[error(
        "{url}: lbmesh answers plain HTTP there, not HTTPS; use http:// (or --config with the daemon's config)"
    )]
    WantsHttp { url: Url },
    #[error(
        "{url}: the server's certificate is not trusted ({why}); give the CA or certificate that signs it with --ca, or --config with the daemon's config"
    )]
    Untrusted { url: Url, why: String },
    #[error("lbmesh does not answer at {url}: {why}")]
    Unreachable { url: Url, why: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: Url,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered something that is not lbmesh's JSON: {why}")]
    Format { url: Url, why: String },
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("--ca {path}: {problem}")]
    Ca { path: PathBuf, problem: String },
    #[error("{0}")]
    Target(String),
}

/// Where a daemon's API is and how to trust and authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// Scheme, the host name the certificate is checked against, and port.
    pub url: Url,
    /// Connect here instead of resolving the URL's host (the daemon listens
    /// on every address: its loopback is reached, under the certificate's name).
    pub connect: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// Trust only this CA or certificate (PEM) instead of the system roots.
    pub ca: Option<PathBuf>,
}

impl ApiTarget {
    /// The local daemon's API as its settings describe it: the place every
    /// local client (status, the keepalived check and notify) goes.
    pub fn local(s: &Settings) -> Result<ApiTarget, ClientError> {
        let listen = s.api.listen;
        let ip = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        let (scheme, name) = match &s.api.tls {
            None => ("http", None),
            // Made for localhost and the API address.
            Some(ApiTls::SelfSigned { .. }) => ("https", Some(Name::Dns("localhost".into()))),
            Some(ApiTls::Files { cert, .. }) => (
                "https",
                certificate_name(cert, ip, listen.ip().is_unspecified())?,
            ),
        };
        let (host, connect) = match name {
            None => (url_host(ip), None),
            Some(Name::Ip(other)) => (url_host(other), None),
            Some(Name::Dns(d)) => (d, Some(addr)),
        };
        let url = Url::parse(&format!("{scheme}://{host}:{}/", listen.port()))
            .map_err(|e| ClientError::Target(format!("api-listen {listen}: {e}")))?;
        Ok(ApiTarget {
            url,
            connect,
            token_file: Some(s.token_file.clone()),
            ca: trusted_ca(s),
        })
    }

    /// `--api URL` as given, with nothing to trust but the system roots
    /// and no token yet.
    pub fn url(api: &str) -> Result<ApiTarget, ClientError> {
        let url = Url::parse(api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ClientError::Target(format!(
                    "--api {api:?} must be an http:// or https:// URL, e.g. https://127.0.0.1:9000"
                ))
            })?;
        Ok(ApiTarget {
            url,
            connect: None,
            token_file: None,
            ca: None,
        })
    }

    /// The base URL as a user would type it.
    pub fn base(&self) -> String {
        self.url.as_str().trim_end_matches('/').to_owned()
    }
}

/// What a client of the daemon these settings describe pins: the
/// self-signed `api.crt`, or the cluster CA when it signed `api.tls-cert`
/// (`lbmesh ca issue --name`); None for plain HTTP and for certificates from
/// elsewhere (certbot's: the system roots).
pub fn trusted_ca(s: &Settings) -> Option<PathBuf> {
    match &s.api.tls {
        None => None,
        Some(ApiTls::SelfSigned { dir, .. }) => Some(dir.join("api.crt")),
        Some(ApiTls::Files { cert, .. }) => match &s.gossip.tls {
            GossipTls::Quic { files, .. } if signed_by(cert, &files.ca_cert) => {
                Some(files.ca_cert.clone())
            }
            _ => None,
        },
    }
}

/// A name a certificate is valid for.
enum Name {
    Ip(IpAddr),
    Dns(String),
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// How to reach the local daemon at `ip` so that its certificate verifies:
/// `ip` itself when the certificate carries it; for a daemon that listens
/// on every address (`wildcard`), an address of this host the certificate
/// carries (`lbmesh ca issue --name 198.18.0.11`); else its first DNS name,
/// connecting to `ip`. None: `ip`, and verification will say what is wrong.
fn certificate_name(cert: &Path, ip: IpAddr, wildcard: bool) -> Result<Option<Name>, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::extensions::GeneralName;
    let der = rustls_pki_types::CertificateDer::from_pem_file(cert)
        .map_err(|e| ClientError::Target(format!("api.tls-cert {}: {e}", cert.display())))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| ClientError::Target(format!("api.tls-cert {}: {e}", cert.display())))?;
    let (mut ips, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::IPAddress(b) => ips.extend(match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                    _ => None,
                }),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    if ips.contains(&ip) {
        return Ok(Some(Name::Ip(ip)));
    }
    // Only this host's own addresses can be bound.
    let local = |a: &IpAddr| std::net::UdpSocket::bind(SocketAddr::new(*a, 0)).is_ok();
    if let Some(a) = ips.iter().find(|a| wildcard && local(a)) {
        return Ok(Some(Name::Ip(*a)));
    }
    Ok(dns.into_iter().next().map(Name::Dns))
}

/// Whether `ca_file` (PEM) issued `cert` (PEM).
fn signed_by(cert: &Path, ca_file: &Path) -> bool {
    use rustls_pki_types::pem::PemObject;
    let (Ok(c), Ok(ca)) = (
        rustls_pki_types::CertificateDer::from_pem_file(cert),
        rustls_pki_types::CertificateDer::from_pem_file(ca_file),
    ) else {
        return false;
    };
    let (Ok((_, c)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&c),
        x509_parser::parse_x509_certificate(&ca),
    ) else {
        return false;
    };
    c.issuer() == ca.subject() && c.verify_signature(Some(ca.public_key())).is_ok()
}

/// The HTTP client with lbmesh's one TLS policy: verify always; trust only
/// `ca` when given, else the system roots (and `SSL_CERT_FILE`).
pub fn http(ca: Option<&Path>, timeout: Duration) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .use_rustls_tls();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| ClientError::Ca {
            path: ca.to_owned(),
            problem: e.to_string(),
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|_| ClientError::Ca {
            path: ca.to_owned(),
            problem: "not a PEM certificate".into(),
        })?;
        b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
    }
    Ok(b)
}

/// An error with its causes, e.g. a TLS failure under "error sending request".
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client of one daemon's API.
pub struct ApiClient {
    target: ApiTarget,
    http: reqwest::Client,
    token: Option<Token>,
}

impl ApiClient {
    /// `with_token`: load the token file now (commands that need it fail
    /// early with a clear message when it is missing).
    pub fn new(
        target: ApiTarget,
        timeout: Duration,
        with_token: bool,
    ) -> Result<Self, ClientError> {
        let mut b = http(target.ca.as_deref(), timeout)?;
        if let (Some(addr), Some(host)) = (target.connect, target.url.host_str()) {
            b = b.resolve(host, addr);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Target(format!("HTTP client: {e}")))?;
        let token = match (&target.token_file, with_token) {
            (Some(f), true) => Some(Token::load(f)?),
            (None, true) => {
                return Err(ClientError::Target(
                    "the API token is needed: give --token-file or --config".into(),
                ));
            }
            (_, false) => None,
        };
        Ok(ApiClient {
            target,
            http,
            token,
        })
    }

    pub fn target(&self) -> &ApiTarget {
        &self.target
    }

    /// The URL of `path`, which may carry a query (`/v1/drain?timeout=30`).
    fn url(&self, path: &str) -> Url {
        let mut u = self.target.url.clone();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        u.set_path(path);
        u.set_query(query);
        u
    }

    /// GET `path`; the status and the JSON body (Null when not JSON).
    pub async fn get_raw(
        &self,
        path: &str,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let url = self.url(path);
        let mut req = self.http.get(url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.explain(url, e).await),
        };
        let status = resp.status();
        let body = resp.json().await.unwrap_or_default();
        Ok((status, body))
    }

    /// GET `path` as `T`; any answer but 2xx is an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut req = self.http.get(url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        self.finish(url, req).await
    }

    /// POST to `path` with no body.
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut req = self.http.post(url.clone());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        self.finish(url, req).await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut req = self.http.post(url.clone()).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        self.finish(url, req).await
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        url: Url,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.explain(url, e).await),
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status,
                body: text.trim().chars().take(500).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Format {
            url,
            why: e.to_string(),
        })
    }

    /// Why a request failed, in the user's words: a certificate that is not
    /// trusted, or http against https (found by asking the other way, with
    /// no token), or simply no answer.
    async fn explain(&self, url: Url, e: reqwest::Error) -> ClientError {
        let why = causes(&e);
        if why.contains("certificate") {
            return ClientError::Untrusted { url, why };
        }
        let mut other = url.clone();
        let https = url.scheme() == "https";
        let _ = other.set_scheme(if https { "http" } else { "https" });
        other.set_path("/healthz");
        // Any certificate will do for this question, and nothing is sent
        // but a GET of the health path: the token never goes along.
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .use_rustls_tls()
            .danger_accept_invalid_certs(true);
        let probe = match (self.target.connect, url.host_str()) {
            (Some(addr), Some(host)) => probe.resolve(host, addr),
            _ => probe,
        };
        if let Ok(probe) = probe.build() {
            if probe.get(other).send().await.is_ok() {
                return if https {
                    ClientError::WantsHttp { url }
                } else {
                    ClientError::WantsHttps { url }
                };
            }
        }
        ClientError::Unreachable { url, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

    fn settings(toml: &str) -> Settings {
        let file: FileConfig = toml::from_str(toml).unwrap();
        Settings::resolve(file, Overrides::default(), Path::new("/srv")).unwrap()
    }

    #[test]
    fn the_local_target_follows_the_daemons_config() {
        let t = ApiTarget::local(&settings("")).unwrap();
        assert_eq!(t.base(), "http://127.0.0.1:9000");
        assert_eq!(
            t.token_file.as_deref(),
            Some(Path::new("/srv/lbmesh-data/token"))
        );
        assert_eq!(t.ca, None);

        let t = ApiTarget::local(&settings(
            "api-listen = \"0.0.0.0:9443\"\ndata-dir = \"/var/lib/lbmesh\"\ntoken-file = \"/etc/lbmesh/token\"\n[api]\ntls-self-signed = true\n",
        ))
        .unwrap();
        assert_eq!(t.base(), "https://localhost:9443");
        assert_eq!(t.connect, Some("127.0.0.1:9443".parse().unwrap()));
        assert_eq!(
            t.ca.as_deref(),
            Some(Path::new("/var/lib/lbmesh/tls/api.crt"))
        );
        assert_eq!(
            t.token_file.as_deref(),
            Some(Path::new("/etc/lbmesh/token"))
        );

        let t = ApiTarget::local(&settings("api-listen = \"[::]:9000\"")).unwrap();
        assert_eq!(t.base(), "http://[::1]:9000");
    }

    #[test]
    fn a_certificates_own_name_is_used_to_reach_the_local_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::Ca::generate("test", Duration::from_secs(600)).unwrap();
        let (cert, _) = ca
            .issue(
                &"lb1".parse().unwrap(),
                &["192.0.2.1".into(), "127.0.0.2".into()],
                Duration::from_secs(600),
            )
            .unwrap();
        let path = dir.path().join("lb1.crt");
        std::fs::write(&path, cert).unwrap();
        let name = |ip: &str, wildcard| match certificate_name(&path, ip.parse().unwrap(), wildcard)
            .unwrap()
        {
            Some(Name::Ip(a)) => a.to_string(),
            Some(Name::Dns(d)) => format!("dns:{d}"),
            None => "none".into(),
        };
        // The address it listens on, when the certificate carries it.
        assert_eq!(name("192.0.2.1", false), "192.0.2.1");
        // Listening everywhere: an address of this host that it carries
        // (192.0.2.1 is not one).
        assert_eq!(name("127.0.0.1", true), "127.0.0.2");
        // Else its DNS name, connecting to the address.
        assert_eq!(
            name("127.0.0.1", false),
            format!("dns:{}", crate::tls::PEER_NAME)
        );
    }

    #[test]
    fn a_given_url_must_be_http_or_https() {
        assert!(ApiTarget::url("https://lb1:9000").is_ok());
        for bad in ["lb1:9000", "ftp://lb1", "https://"] {
            assert!(ApiTarget::url(bad).is_err(), "{bad}");
        }
    }
}
