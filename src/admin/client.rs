//! A plain HTTP/1.1 GET to an admin endpoint (hyper's connection API, one connection per request), for
//! `regent admin` and tests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// The admin port a node address without one gets.
pub const DEFAULT_PORT: u16 = 8558;

/// How long a request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to an admin endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad admin address {0:?}: expected host:port or http://host:port")]
    Address(String),
    #[error("cannot reach the admin endpoint at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("admin endpoint at {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("the admin endpoint at {addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("unexpected answer from {url} ({status}): {detail}")]
    Answer { url: String, status: StatusCode, detail: String },
}

/// An answer: its status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// `GET path` (with its query) on the admin endpoint at `node` (`host:port` or `http://host:port`).
pub async fn get(node: &str, path: &str) -> Result<Response, Error> {
    get_with_token(node, path, None).await
}

/// [`get`], sending `token` (when given) as `Authorization: Bearer <token>`.
pub async fn get_with_token(node: &str, path: &str, token: Option<&str>) -> Result<Response, Error> {
    let authority = authority(node)?;
    let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(DEFAULT_PORT));
    tokio::time::timeout(TIMEOUT, request(&addr, path, token))
        .await
        .unwrap_or_else(|_| Err(Error::Timeout { addr: addr.clone() }))
}

/// [`get`], expecting `200` (or another status listed in `accepted`) and a JSON body.
pub async fn get_json<T: DeserializeOwned>(node: &str, path: &str, accepted: &[StatusCode]) -> Result<T, Error> {
    get_json_with_token(node, path, accepted, None).await
}

/// [`get_json`] with a token (see [`get_with_token`]).
pub async fn get_json_with_token<T: DeserializeOwned>(
    node: &str,
    path: &str,
    accepted: &[StatusCode],
    token: Option<&str>,
) -> Result<T, Error> {
    let response = get_with_token(node, path, token).await?;
    let url = format!("{}{path}", node.trim_end_matches('/'));
    if response.status != StatusCode::OK && !accepted.contains(&response.status) {
        let detail = String::from_utf8_lossy(&response.body).into_owned();
        return Err(Error::Answer { url, status: response.status, detail });
    }
    serde_json::from_slice(&response.body).map_err(|e| Error::Answer {
        url,
        status: response.status,
        detail: format!("not the JSON expected: {e}"),
    })
}

async fn request(addr: &str, path: &str, token: Option<&str>) -> Result<Response, Error> {
    let stream = TcpStream::connect(addr).await.map_err(|source| Error::Connect { addr: addr.to_string(), source })?;
    let http = |source| Error::Http { addr: addr.to_string(), source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    // Ends with the response (or when the request is dropped).
    tokio::spawn(connection);
    let mut request =
        hyper::Request::get(path).header(hyper::header::HOST, addr).header(hyper::header::ACCEPT, "application/json");
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|_| Error::Address(format!("{addr}{path}")))?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.map_err(http)?.to_bytes();
    Ok(Response { status, headers, body })
}

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
fn authority(node: &str) -> Result<Authority, Error> {
    let bad = || Error::Address(node.to_string());
    let rest = node.strip_prefix("http://").unwrap_or(node).trim_end_matches('/');
    if rest.contains("://") || rest.contains('/') || rest.contains('@') || rest.is_empty() {
        return Err(bad());
    }
    let authority = rest.parse::<Authority>().map_err(|_| bad())?;
    let has_port = rest.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
    if has_port && authority.port_u16().is_none() {
        return Err(bad());
    }
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_with_or_without_scheme() {
        let a = authority("127.0.0.1:8558").unwrap();
        assert_eq!((a.host(), a.port_u16()), ("127.0.0.1", Some(8558)));
        let a = authority("http://node-1:9100/").unwrap();
        assert_eq!((a.host(), a.port_u16()), ("node-1", Some(9100)));
        assert_eq!(authority("localhost").unwrap().port_u16(), None);
        assert_eq!(authority("[::1]").unwrap().port_u16(), None);
        let a = authority("[::1]:8558").unwrap();
        assert_eq!((a.host(), a.port_u16()), ("[::1]", Some(8558)));
        for bad in ["", "https://node:8558", "http://node:8558/actors", "user@node:1", "node:notaport"] {
            assert!(matches!(authority(bad), Err(Error::Address(_))), "{bad} was accepted");
        }
    }
}
