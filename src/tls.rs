//! The cluster CA and peer certificates: created with rcgen, checked with
//! rustls/webpki, and turned into mutual-TLS configs for peer links.
//!
//! A peer certificate names its node id as the URI `urn:lbmesh:node:<id>` and
//! carries the DNS name [`PEER_NAME`], which every peer verifies when it
//! connects (the address alone cannot say which node should answer).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use crate::registry::PeerId;
use crate::store::{StoreError, write_atomic_mode};

/// The DNS name every peer certificate carries and every peer checks.
pub const PEER_NAME: &str = "peer.lbmesh";
/// The URI prefix naming a node in a peer certificate.
pub const NODE_URI: &str = "urn:lbmesh:node:";
/// ALPN of the gossip protocol over QUIC.
pub const GOSSIP_ALPN: &[u8] = b"lbmesh-gossip/1";

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
/// The revocation list `lbmesh ca revoke` writes beside the CA, and peers load.
pub const CRL: &str = "crl.pem";
/// Every certificate the CA issued: `serial<TAB>node<TAB>not-after (Unix s)`.
pub const ISSUED: &str = "issued.tsv";
/// Every certificate revoked: `serial<TAB>node<TAB>when (Unix s)`.
pub const REVOKED: &str = "revoked.tsv";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Write(#[from] StoreError),
    #[error("{path} already exists; refusing to overwrite a CA (move it away first)")]
    Exists { path: PathBuf },
    #[error("{path}: {problem}")]
    Bad { path: PathBuf, problem: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Rustls(String),
    #[error(
        "certificate names node {found:?}, but this peer is {expected:?}; issue one for it with `lbmesh ca issue --node-id {expected}`"
    )]
    WrongNode { found: String, expected: String },
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::Io {
        path: path.to_owned(),
        error,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn offset_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The cluster certificate authority: its certificate and signing key.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// A new CA, valid for `validity`.
    pub fn generate(cluster_id: &str, validity: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("lbmesh cluster CA ({cluster_id})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset_now() - time::Duration::minutes(5);
        params.not_after = offset_now() + validity;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| TlsError::Bad {
            path: key_path.clone(),
            problem: format!("not a PEM private key: {e}"),
        })?;
        // Parse now, so a broken file is reported here and not at first use.
        Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| TlsError::Bad {
            path: cert_path,
            problem: format!("not a usable CA certificate: {e}"),
        })?;
        Ok(Ca { cert_pem, key })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`, never over existing files.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|error| TlsError::Io {
            path: dir.to_owned(),
            error,
        })?;
        for name in [CA_CERT, CA_KEY] {
            let p = dir.join(name);
            if p.exists() {
                return Err(TlsError::Exists { path: p });
            }
        }
        write_atomic_mode(
            &dir.join(CA_KEY),
            self.key.serialize_pem().as_bytes(),
            Some(0o600),
        )?;
        write_atomic_mode(&dir.join(CA_CERT), self.cert_pem.as_bytes(), Some(0o644))?;
        Ok(())
    }

    /// Issues a peer certificate for `node`, usable as TLS server and client.
    /// `names` adds DNS names or IP addresses (for serving the API with it).
    /// Returns (certificate PEM, private key PEM).
    pub fn issue(
        &self,
        node: &PeerId,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, String), TlsError> {
        self.issue_between(
            node,
            names,
            offset_now() - time::Duration::minutes(5),
            offset_now() + validity,
        )
    }

    /// Like [`Ca::issue`] with explicit validity bounds (tests issue expired ones).
    pub fn issue_between(
        &self,
        node: &PeerId,
        names: &[String],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![PEER_NAME.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node.as_str());
        params.subject_alt_names.push(SanType::URI(
            format!("{NODE_URI}{node}")
                .try_into()
                .map_err(|e: rcgen::Error| e)?,
        ));
        for n in names {
            params.subject_alt_names.push(san(n)?);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The serial number of a PEM certificate, as hex.
pub fn serial_of_pem(pem: &str) -> Result<String, String> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or("no certificate")?
        .map_err(|e| e.to_string())?;
    serial_of(&der)
}

/// The serial number of a certificate, as hex.
pub fn serial_of(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(hex::encode(x509.raw_serial()))
}

fn ledger(dir: &Path, name: &str) -> Result<Vec<(String, String, i64)>, TlsError> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(TlsError::Io { path, error }),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            [serial, node, t] if hex::decode(serial).is_ok() => {
                out.push(((*serial).into(), (*node).into(), t.parse().unwrap_or(0)))
            }
            _ => {
                return Err(TlsError::Bad {
                    path,
                    problem: format!("line {} is not serial, node, time", i + 1),
                });
            }
        }
    }
    Ok(out)
}

fn append_ledger(dir: &Path, name: &str, rows: &[(String, String, i64)]) -> Result<(), TlsError> {
    let mut all = ledger(dir, name)?;
    all.extend_from_slice(rows);
    let text: String = all
        .iter()
        .map(|(s, n, t)| format!("{s}\t{n}\t{t}\n"))
        .collect();
    write_atomic_mode(&dir.join(name), text.as_bytes(), Some(0o644))?;
    Ok(())
}

impl Ca {
    /// Notes a certificate this CA issued in `dir`'s ledger, so that
    /// `lbmesh ca revoke --node-id` can find it later.
    pub fn record_issued(dir: &Path, node: &PeerId, cert_pem: &str) -> Result<(), TlsError> {
        let serial = serial_of_pem(cert_pem).map_err(|problem| TlsError::Bad {
            path: dir.join(ISSUED),
            problem,
        })?;
        let (_, not_after) = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .and_then(|der| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(r, c)| (r.len(), c.validity().not_after.timestamp()))
            })
            .unwrap_or((0, 0));
        append_ledger(dir, ISSUED, &[(serial, node.to_string(), not_after)])
    }

    /// Revokes every certificate issued to `node` that is not revoked yet,
    /// and writes `crl.pem` in `dir` with every revocation so far, signed by
    /// this CA. Returns how many certificates this call revoked.
    pub fn revoke(&self, dir: &Path, node: &PeerId) -> Result<usize, TlsError> {
        let issued = ledger(dir, ISSUED)?;
        let revoked = ledger(dir, REVOKED)?;
        let now = offset_now();
        let new: Vec<(String, String, i64)> = issued
            .iter()
            .filter(|(s, n, _)| n == node.as_str() && !revoked.iter().any(|(r, _, _)| r == s))
            .map(|(s, n, _)| (s.clone(), n.clone(), now.unix_timestamp()))
            .collect();
        append_ledger(dir, REVOKED, &new)?;
        let all = ledger(dir, REVOKED)?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(3650),
            crl_number: rcgen::SerialNumber::from(now.unix_timestamp().max(1) as u64),
            issuing_distribution_point: None,
            revoked_certs: all
                .iter()
                .map(|(s, _, t)| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(
                        &hex::decode(s).unwrap_or_default(),
                    ),
                    revocation_time: time::OffsetDateTime::from_unix_timestamp(*t).unwrap_or(now),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let crl = params.signed_by(&issuer)?;
        write_atomic_mode(&dir.join(CRL), crl.pem()?.as_bytes(), Some(0o644))?;
        Ok(new.len())
    }
}

/// Loads a revocation list (PEM) and checks that `ca_cert` signed it.
/// Returns the list and the revoked serial numbers (hex).
pub fn load_crl(
    path: &Path,
    ca_cert: &Path,
) -> Result<(CertificateRevocationListDer<'static>, Vec<String>), TlsError> {
    let bad = |problem: String| TlsError::Bad {
        path: path.to_owned(),
        problem,
    };
    let der = rustls_pemfile::crls(&mut read(path)?.as_bytes())
        .next()
        .ok_or_else(|| bad("holds no revocation list (X509 CRL)".into()))?
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| bad(format!("not a revocation list: {e}")))?;
    let ca = load_certs(ca_cert)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca[0])
        .map_err(|e| bad(format!("unreadable CA certificate: {e}")))?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| bad(format!("not signed by the cluster CA: {e}")))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    Ok((der, serials))
}

/// A subject alternative name: an IP address, or else a DNS name.
fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.to_owned().try_into()?),
    })
}

/// The node id a peer certificate names, if it names exactly one.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI) {
                    ids.push(id.to_owned());
                }
            }
        }
    }
    match ids.as_slice() {
        [one] => one.parse().map_err(|e: crate::registry::FieldError| {
            format!("certificate names an invalid node id: {e}")
        }),
        [] => Err("certificate names no lbmesh node (not a peer certificate)".into()),
        _ => Err("certificate names several nodes".into()),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut read(path)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad {
            path: path.to_owned(),
            problem: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Bad {
            path: path.to_owned(),
            problem: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut read(path)?.as_bytes())
        .map_err(|e| TlsError::Bad {
            path: path.to_owned(),
            problem: format!("bad PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Bad {
            path: path.to_owned(),
            problem: "holds no private key".into(),
        })
}

/// Where a peer's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A peer's mutual-TLS material, checked at load.
#[derive(Clone)]
pub struct PeerTls {
    pub node: PeerId,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// Revoked peer certificates: refused in every handshake.
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads and checks: the certificate is signed by the CA, valid now, and
    /// names `node`.
    pub fn load(files: &PeerTlsFiles, node: &PeerId) -> Result<PeerTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&files.ca_cert)? {
            roots.add(ca).map_err(|e| TlsError::Bad {
                path: files.ca_cert.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let found = node_id_of(&chain[0]).map_err(|problem| TlsError::Bad {
            path: files.cert.clone(),
            problem,
        })?;
        if &found != node {
            return Err(TlsError::WrongNode {
                found: found.to_string(),
                expected: node.to_string(),
            });
        }
        let tls = PeerTls {
            node: node.clone(),
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            crls: Vec::new(),
        };
        tls.verifier()?
            .verify_server_cert(
                &tls.chain[0],
                &tls.chain[1..],
                &ServerName::try_from(PEER_NAME).expect("valid name"),
                &[],
                UnixTime::now(),
            )
            .map_err(|e| TlsError::Bad {
                path: files.cert.clone(),
                problem: format!("not valid against {}: {e}", files.ca_cert.display()),
            })?;
        // The key must fit the certificate.
        tls.server_config()?;
        Ok(tls)
    }

    /// The same material, refusing the certificates `crl` revokes.
    pub fn with_crl(&self, crl: CertificateRevocationListDer<'static>) -> PeerTls {
        PeerTls {
            crls: vec![crl],
            ..self.clone()
        }
    }

    fn verifier(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
        let mut b = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        );
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.clone())
                .only_check_end_entity_revocation();
        }
        b.build().map_err(|e| TlsError::Rustls(e.to_string()))
    }

    /// Accepts only clients with a certificate from the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut b = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.clone())
                .only_check_end_entity_revocation();
        }
        let verifier = b.build().map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                TlsError::Rustls(format!("certificate and key do not fit together: {e}"))
            })?;
        c.alpn_protocols = vec![GOSSIP_ALPN.to_vec()];
        Ok(c)
    }

    /// A secret of this peer for one `purpose`, derived from its private key:
    /// the same on every start with the same key, unknown without the key.
    pub fn derived_secret(&self, purpose: &[u8]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.secret_der());
        let mut out = [0; 32];
        out.copy_from_slice(ring::hmac::sign(&key, purpose).as_ref());
        out
    }

    /// Presents this peer's certificate and accepts only servers with one from the cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_webpki_verifier(self.verifier()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        c.alpn_protocols = vec![GOSSIP_ALPN.to_vec()];
        Ok(c)
    }
}

/// Creates a CA and a certificate for `node` in `dir` when none exist yet:
/// a single peer then runs with encrypted, authenticated gossip and no manual step.
pub fn ensure_single_peer_tls(dir: &Path, node: &PeerId) -> Result<PeerTlsFiles, TlsError> {
    let files = PeerTlsFiles {
        ca_cert: dir.join(CA_CERT),
        cert: dir.join(format!("{node}.crt")),
        key: dir.join(format!("{node}.key")),
    };
    if files.ca_cert.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let ca = if dir.join(CA_KEY).exists() {
        Ca::load(dir)?
    } else {
        let ca = Ca::generate("single peer", Duration::from_secs(10 * 365 * 24 * 3600))?;
        ca.save(dir)?;
        ca
    };
    let (cert, key) = ca.issue(node, &[], Duration::from_secs(10 * 365 * 24 * 3600))?;
    write_atomic_mode(&files.key, key.as_bytes(), Some(0o600))?;
    write_atomic_mode(&files.cert, cert.as_bytes(), Some(0o644))?;
    tracing::info!(dir = %dir.display(), "created a cluster CA and this peer's certificate (single peer)");
    Ok(files)
}

/// A self-signed certificate for the API in `dir` (`api.crt`, `api.key`),
/// made on first use for `names` and reused after; clients pin `api.crt`.
pub fn ensure_self_signed_api(
    dir: &Path,
    names: &[String],
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = (dir.join("api.crt"), dir.join("api.key"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(|error| TlsError::Io {
        path: dir.to_owned(),
        error,
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lbmesh API");
    for n in names {
        params.subject_alt_names.push(san(n)?);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset_now() - time::Duration::minutes(5);
    params.not_after = offset_now() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write_atomic_mode(&key_path, key.serialize_pem().as_bytes(), Some(0o600))?;
    write_atomic_mode(&cert_path, cert.pem().as_bytes(), Some(0o644))?;
    tracing::info!(cert = %cert_path.display(), "created a self-signed API certificate; clients can pin it");
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, node: &str) -> PeerTlsFiles {
        PeerTlsFiles {
            ca_cert: dir.join(CA_CERT),
            cert: dir.join(format!("{node}.crt")),
            key: dir.join(format!("{node}.key")),
        }
    }

    fn write_pair(dir: &Path, node: &str, (cert, key): (String, String)) {
        std::fs::write(dir.join(format!("{node}.crt")), cert).unwrap();
        std::fs::write(dir.join(format!("{node}.key")), key).unwrap();
    }

    #[test]
    fn issue_load_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test", Duration::from_secs(3600)).unwrap();
        ca.save(dir.path()).unwrap();
        assert!(matches!(ca.save(dir.path()), Err(TlsError::Exists { .. })));
        let ca = Ca::load(dir.path()).unwrap();
        let lb1: PeerId = "lb1".parse().unwrap();
        write_pair(
            dir.path(),
            "lb1",
            ca.issue(
                &lb1,
                &["198.18.0.11".into(), "lb1.example.com".into()],
                Duration::from_secs(60),
            )
            .unwrap(),
        );
        let tls = PeerTls::load(&files(dir.path(), "lb1"), &lb1).unwrap();
        assert_eq!(tls.node, lb1);
        assert_eq!(node_id_of(&tls.chain[0]).unwrap(), lb1);

        // A certificate for another node.
        let err = PeerTls::load(&files(dir.path(), "lb1"), &"lb2".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("names node \"lb1\""), "{err}");

        // Expired.
        let old = offset_now() - time::Duration::days(10);
        write_pair(
            dir.path(),
            "old",
            ca.issue_between(
                &"old".parse().unwrap(),
                &[],
                old,
                old + time::Duration::days(1),
            )
            .unwrap(),
        );
        let err = PeerTls::load(&files(dir.path(), "old"), &"old".parse().unwrap()).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");

        // Signed by another CA.
        let other = Ca::generate("other", Duration::from_secs(3600)).unwrap();
        write_pair(
            dir.path(),
            "rogue",
            other
                .issue(&"rogue".parse().unwrap(), &[], Duration::from_secs(60))
                .unwrap(),
        );
        let err =
            PeerTls::load(&files(dir.path(), "rogue"), &"rogue".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn single_peer_material_is_created_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let node: PeerId = "solo".parse().unwrap();
        let f = ensure_single_peer_tls(dir.path(), &node).unwrap();
        let first = std::fs::read(&f.cert).unwrap();
        let f2 = ensure_single_peer_tls(dir.path(), &node).unwrap();
        assert_eq!(f, f2);
        assert_eq!(std::fs::read(&f.cert).unwrap(), first);
        assert_eq!(
            std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        PeerTls::load(&f, &node).unwrap();
    }

    #[test]
    fn revoked_certificates_are_refused_and_only_the_ca_can_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test", Duration::from_secs(3600)).unwrap();
        ca.save(dir.path()).unwrap();
        let (lb1, lb2): (PeerId, PeerId) = ("lb1".parse().unwrap(), "lb2".parse().unwrap());
        for node in [&lb1, &lb2] {
            let pair = ca.issue(node, &[], Duration::from_secs(600)).unwrap();
            Ca::record_issued(dir.path(), node, &pair.0).unwrap();
            write_pair(dir.path(), node.as_str(), pair);
        }
        assert_eq!(ca.revoke(dir.path(), &lb2).unwrap(), 1);
        assert_eq!(ca.revoke(dir.path(), &lb2).unwrap(), 0, "already revoked");
        let (crl, serials) = load_crl(&dir.path().join(CRL), &dir.path().join(CA_CERT)).unwrap();
        let tls1 = PeerTls::load(&files(dir.path(), "lb1"), &lb1).unwrap();
        let tls2 = PeerTls::load(&files(dir.path(), "lb2"), &lb2).unwrap();
        assert_eq!(serials, vec![serial_of(&tls2.chain[0]).unwrap()]);
        let verifier = tls1.with_crl(crl).verifier().unwrap();
        let check = |t: &PeerTls| {
            verifier.verify_server_cert(
                &t.chain[0],
                &[],
                &ServerName::try_from(PEER_NAME).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        let err = check(&tls2).unwrap_err().to_string();
        assert!(err.contains("Revoked"), "{err}");
        check(&tls1).unwrap();
        // A list signed by another CA revokes nothing.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Ca::generate("other", Duration::from_secs(3600)).unwrap();
        std::fs::copy(dir.path().join(ISSUED), other_dir.path().join(ISSUED)).unwrap();
        other.revoke(other_dir.path(), &lb1).unwrap();
        let err = load_crl(&other_dir.path().join(CRL), &dir.path().join(CA_CERT)).unwrap_err();
        assert!(
            err.to_string().contains("not signed by the cluster CA"),
            "{err}"
        );
    }
}
