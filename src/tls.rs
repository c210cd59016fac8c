//! TLS (rustls, ring provider) for the three kinds of connection a node makes or takes (docs/security.md):
//!
//! - the client gRPC port ([`server_tls`]): a certificate and key, optionally a client CA (mutual TLS);
//! - calls to the write handler and the read-side handlers ([`handler_endpoint`]): `https` with the system's roots,
//!   or only a private CA when a CA file is given;
//! - node-to-node links ([`ClusterTls`]): mutual TLS, both ends present a certificate signed by the cluster's CA
//!   and verify the other's. Names are not checked, only the CA: members dial each other by whatever address
//!   they advertise (a pod IP changes with every restart), so the CA must be dedicated to the cluster. The cookie
//!   is still checked on top, inside the encrypted link.
//!
//! Files are read when the node starts; an unreadable or malformed file stops it with an error naming the key.

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::{ClusterConfig, ServerConfig};

/// Makes ring rustls's process-wide provider. rustls is built with both ring (our choice, tonic's `tls-ring`) and
/// aws-lc-rs (ractor_cluster enables tokio-rustls's default features), so it cannot pick one by itself, and
/// tonic's TLS builders, which ask for the process default, would panic. Idempotent.
pub fn install_crypto_provider() {
    let _ = crypto::ring::default_provider().install_default();
}

/// How long a TLS handshake may take, on any listener.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS setting that cannot be used; names the key at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{key}: cannot read {path}: {message}")]
    Read { key: &'static str, path: String, message: String },
    #[error("{key}: {path}: {message}")]
    Pem { key: &'static str, path: String, message: String },
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Read { key, path: path.to_string(), message: e.to_string() })
}

/// Every certificate of a PEM file (at least one).
fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(key, path)?;
    let pem_error = |message: String| Error::Pem { key, path: path.to_string(), message };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("holds no certificate".into()));
    }
    Ok(certs)
}

/// A root store of every CA certificate of a PEM file.
fn ca_roots(key: &'static str, path: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(key, path)? {
        roots.add(ca).map_err(|e| Error::Pem {
            key,
            path: path.to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn private_key(key: &'static str, path: &str) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        key,
        path: path.to_string(),
        message: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
    })
}

/// Whether a file setting is given (blank = not).
pub fn is_set(path: &str) -> bool {
    !path.trim().is_empty()
}

/// The client port's TLS, when `server.tls_cert_file` is set (validated: the key is then set too).
pub fn server_tls(server: &ServerConfig) -> Result<Option<ServerTlsConfig>, Error> {
    if !is_set(&server.tls_cert_file) {
        return Ok(None);
    }
    // Parsed here too so that a bad file is reported with its key, not as a tonic error.
    certificates("server.tls_cert_file", &server.tls_cert_file)?;
    private_key("server.tls_key_file", &server.tls_key_file)?;
    let identity = Identity::from_pem(
        read("server.tls_cert_file", &server.tls_cert_file)?,
        read("server.tls_key_file", &server.tls_key_file)?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT);
    if is_set(&server.tls_client_ca_file) {
        certificates("server.tls_client_ca_file", &server.tls_client_ca_file)?;
        tls = tls.client_ca_root(Certificate::from_pem(read("server.tls_client_ca_file", &server.tls_client_ca_file)?));
    }
    Ok(Some(tls))
}

/// A lazily connecting endpoint to a handler at `url` (`http://` or `https://`). With `https`, the handler's
/// certificate must be signed by a CA of `ca_file` (`ca_key` names that setting in errors) or, when it is empty,
/// by one of the system's roots.
pub fn handler_endpoint(url: &str, ca_key: &'static str, ca_file: &str) -> Result<Endpoint, Error> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config { key: ca_key, message: format!("bad handler URL {url}: {e}") })?
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = if is_set(ca_file) {
        certificates(ca_key, ca_file)?;
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_key, ca_file)?))
    } else {
        ClientTlsConfig::new().with_native_roots()
    };
    endpoint.tls_config(tls).map_err(|e| Error::Config { key: ca_key, message: e.to_string() })
}

/// The TLS connector for a write handler at `url` when it is `https://` (`None` for `http://`): the handler's
/// certificate must be signed by a CA of `ca_file` or, when it is empty, by one of the system's roots, as with
/// [`handler_endpoint`]; ALPN offers `alpn` (`h2` for gRPC, `http/1.1` for CoS's HTTP/JSON handlers).
pub fn handler_connector(
    url: &str,
    ca_key: &'static str,
    ca_file: &str,
    alpn: &[u8],
) -> Result<Option<TlsConnector>, Error> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    let roots = if is_set(ca_file) {
        ca_roots(ca_key, ca_file)?
    } else {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            return Err(Error::Config {
                key: ca_key,
                message: "no usable system root certificate; set a CA file".into(),
            });
        }
        roots
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config { key: ca_key, message: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// The name a handler's certificate must carry: its host (a DNS name or an IP address, brackets allowed); a host
/// that is neither gets a name no certificate carries, so the handshake fails with a certificate error.
pub fn server_name_of(host: &str) -> ServerName<'static> {
    server_name_or(host, "invalid.invalid")
}

fn server_name_or(host: &str, fallback: &'static str) -> ServerName<'static> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::try_from(fallback).expect("a valid DNS name"))
}

/// Mutual TLS for node-to-node links: the acceptor for the listener, the connector for dialling.
#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    /// From `cluster.tls_*` when they are set (validated: all three or none).
    pub fn from_config(cluster: &ClusterConfig) -> Result<Option<ClusterTls>, Error> {
        if !is_set(&cluster.tls_cert_file) {
            return Ok(None);
        }
        let certs = certificates("cluster.tls_cert_file", &cluster.tls_cert_file)?;
        let key = private_key("cluster.tls_key_file", &cluster.tls_key_file)?;
        let roots = ca_roots("cluster.tls_ca_file", &cluster.tls_ca_file)?;
        Self::new(certs, key, roots).map(Some)
    }

    fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: RootCertStore,
    ) -> Result<Self, Error> {
        let provider = Arc::new(crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let config_error = |e: rustls::Error| Error::Config { key: "cluster.tls_cert_file", message: e.to_string() };

        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| Error::Config { key: "cluster.tls_ca_file", message: e.to_string() })?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(config_error)?;

        let verifier = ClusterCaVerifier { roots, algorithms: provider.signature_verification_algorithms };
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(certs, key)
            .map_err(config_error)?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a dialled peer is asked for (SNI); not verified (see the module documentation).
    pub fn server_name(host: &str) -> ServerName<'static> {
        server_name_or(host, "regent-cluster")
    }
}

/// Accepts a peer's certificate when it chains to the cluster's CA, whatever name it carries (the peer's own
/// listener checks our certificate the same way, [`WebPkiClientVerifier`]).
#[derive(Debug)]
struct ClusterCaVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// `cluster.tls_*` files in `dir` for a node certificate named `name`, signed by `ca`.
    fn node_config(dir: &std::path::Path, ca: &Ca, name: &str) -> ClusterConfig {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca.issuer).unwrap().pem();
        let file = |suffix: &str, text: &str| {
            let path = dir.join(format!("{name}-{suffix}"));
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        ClusterConfig {
            tls_cert_file: file("node.pem", &cert),
            tls_key_file: file("node.key", &key.serialize_pem()),
            tls_ca_file: file("ca.pem", &ca.pem),
            ..ClusterConfig::default()
        }
    }

    fn tls(config: &ClusterConfig) -> ClusterTls {
        ClusterTls::from_config(config).unwrap().expect("TLS configured")
    }

    /// A handshake between a dialler and a listener over an in-memory pipe, and one byte there and back; `Err` if
    /// either side refuses.
    async fn handshake(dialler: &ClusterTls, listener: &ClusterTls) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = async {
            let mut stream = listener.acceptor.accept(b).await.map_err(|e| format!("listener: {e}"))?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.map_err(|e| format!("listener read: {e}"))?;
            stream.write_all(&byte).await.map_err(|e| format!("listener write: {e}"))?;
            stream.flush().await.map_err(|e| format!("listener flush: {e}"))?;
            Ok::<_, String>(())
        };
        let client = async {
            let name = ClusterTls::server_name("10.1.2.3");
            let mut stream = dialler.connector.connect(name, a).await.map_err(|e| format!("dialler: {e}"))?;
            stream.write_all(b"x").await.map_err(|e| format!("dialler write: {e}"))?;
            stream.flush().await.map_err(|e| format!("dialler flush: {e}"))?;
            let mut echo = [0u8; 1];
            stream.read_exact(&mut echo).await.map_err(|e| format!("dialler read: {e}"))?;
            Ok::<_, String>(())
        };
        let (server, client) = tokio::join!(server, client);
        client.and(server)
    }

    #[tokio::test]
    async fn members_of_one_ca_link_whatever_their_names_and_strangers_do_not() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let cluster_ca = ca();
        let a = tls(&node_config(dir.path(), &cluster_ca, "node-a"));
        let b = tls(&node_config(dir.path(), &cluster_ca, "node-b"));
        let stranger = tls(&node_config(dir.path(), &ca(), "node-c"));
        handshake(&a, &b).await.expect("two members link (neither name is the address dialled)");
        handshake(&b, &a).await.expect("both ways");
        assert!(handshake(&stranger, &a).await.is_err(), "a listener accepted a certificate of another CA");
        assert!(handshake(&a, &stranger).await.is_err(), "a dialler accepted a certificate of another CA");
    }

    #[test]
    fn unusable_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = node_config(dir.path(), &ca(), "n");
        let missing = dir.path().join("missing").to_string_lossy().into_owned();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "not PEM").unwrap();
        let garbage = garbage.to_string_lossy().into_owned();
        let cases = [
            (ClusterConfig { tls_key_file: missing.clone(), ..good.clone() }, "cluster.tls_key_file: cannot read"),
            (ClusterConfig { tls_key_file: garbage.clone(), ..good.clone() }, "cluster.tls_key_file: "),
            (ClusterConfig { tls_cert_file: garbage.clone(), ..good.clone() }, "cluster.tls_cert_file: "),
            (ClusterConfig { tls_ca_file: missing, ..good.clone() }, "cluster.tls_ca_file: cannot read"),
            (ClusterConfig { tls_ca_file: garbage, ..good.clone() }, "cluster.tls_ca_file: "),
        ];
        for (config, expected) in cases {
            let err = ClusterTls::from_config(&config).expect_err("refused").to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        assert!(ClusterTls::from_config(&good).is_ok());
        assert!(ClusterTls::from_config(&ClusterConfig::default()).unwrap().is_none(), "no files, no TLS");
    }
}
