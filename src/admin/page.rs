//! The admin page: plain HTML, CSS and JavaScript compiled into the binary (no build step, no framework). The
//! script polls `/cluster`, `/readsides`, `/actors` and `/ready` of the node that served it and redraws.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const INDEX: &str = include_str!("page/index.html");
const STYLESHEET: &str = include_str!("page/admin.css");
const SCRIPT: &str = include_str!("page/admin.js");

pub async fn index() -> impl IntoResponse {
    Html(INDEX)
}

pub async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLESHEET)
}

pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SCRIPT)
}
