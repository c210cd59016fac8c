//! Finding the first peers. Members find each other through the database (every member records its address in
//! `cluster_members`); these sources add addresses to dial while a node has no link yet:
//!
//! - static seeds (`REGENT_CLUSTER_SEEDS`);
//! - DNS (`COS_DEPLOYMENT_MODE=docker`): every address `COS_SERVICE_NAME` resolves to, on the cluster port;
//! - the Kubernetes API (`COS_DEPLOYMENT_MODE=kubernetes`): the running pods labelled `app=COS_KUBERNETES_APP_LABEL`
//!   in the pod's namespace, through the in-cluster service account (RBAC: `get`/`list` on `pods`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tracing::debug;

use crate::config::ClusterConfig;

/// Where a pod finds its service account.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Addresses (`host:port`) to dial from DNS or the Kubernetes API, per `deployment_mode`.
pub async fn discover(service_name: &str, config: &ClusterConfig) -> Vec<String> {
    match config.deployment_mode.as_str() {
        "docker" => dns(service_name, config.port).await,
        "kubernetes" if !config.kubernetes_app_label.is_empty() => {
            match tokio::time::timeout(TIMEOUT, kubernetes(&config.kubernetes_app_label)).await {
                Ok(Ok(ips)) => ips.into_iter().map(|ip| format!("{ip}:{}", config.port)).collect(),
                Ok(Err(e)) => {
                    debug!(error = %e, "Kubernetes discovery found nothing");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

/// Every address `name` resolves to, on `port` (a compose service or a headless service lists every replica).
async fn dns(name: &str, port: u16) -> Vec<String> {
    if name.is_empty() {
        return Vec::new();
    }
    match tokio::net::lookup_host((name, port)).await {
        Ok(addresses) => addresses.map(|a| a.to_string()).collect(),
        Err(e) => {
            debug!(%name, error = %e, "DNS discovery found nothing");
            Vec::new()
        }
    }
}

/// The IPs of the running pods labelled `app=<label>` in this pod's namespace.
async fn kubernetes(label: &str) -> Result<Vec<String>, String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| "KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let read = |file: &str| {
        std::fs::read(format!("{SERVICE_ACCOUNT}/{file}")).map_err(|e| format!("{SERVICE_ACCOUNT}/{file}: {e}"))
    };
    let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
    let namespace = String::from_utf8_lossy(&read("namespace")?).trim().to_string();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
        roots.add(cert.map_err(|e| format!("ca.crt: {e}"))?).map_err(|e| format!("ca.crt: {e}"))?;
    }
    let tls = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(format!("{host}:{port}")).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(Arc::new(tls)).connect(name, stream).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let path = format!("/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{label}");
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("the Kubernetes API answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    running_pod_ips(&body)
}

/// The `status.podIP` of every pod of a `PodList` whose phase is `Running`.
fn running_pod_ips(body: &[u8]) -> Result<Vec<String>, String> {
    let list: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not a PodList: {e}"))?;
    let items = list.get("items").and_then(|i| i.as_array()).ok_or("a PodList without items")?;
    Ok(items
        .iter()
        .filter_map(|pod| pod.get("status"))
        .filter(|status| status.get("phase").and_then(|p| p.as_str()) == Some("Running"))
        .filter_map(|status| status.get("podIP").and_then(|ip| ip.as_str()).map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_pods_with_an_ip_are_dialled() {
        let body = br#"{"kind":"PodList","items":[
            {"metadata":{"name":"regent-0"},"status":{"phase":"Running","podIP":"10.0.0.4"}},
            {"metadata":{"name":"regent-1"},"status":{"phase":"Pending"}},
            {"metadata":{"name":"regent-2"},"status":{"phase":"Running","podIP":"10.0.0.7"}},
            {"metadata":{"name":"regent-3"},"status":{"phase":"Failed","podIP":"10.0.0.9"}}]}"#;
        assert_eq!(running_pod_ips(body).unwrap(), vec!["10.0.0.4", "10.0.0.7"]);
        assert!(running_pod_ips(b"{}").is_err());
    }

    #[tokio::test]
    async fn dns_discovery_resolves_the_service_name_on_the_cluster_port() {
        let found = dns("localhost", 25520).await;
        assert!(found.iter().any(|a| a == "127.0.0.1:25520"), "{found:?}");
        assert!(dns("", 25520).await.is_empty());
    }
}
