//! The web console: static assets built from `dashboard/` into `dashboard/dist`, embedded
//! into the binary at compile time (release builds) and served at `/` with a fallback to
//! `index.html` for client-side routes. `console_dir` serves them from disk instead.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::AppState;
use crate::error::envelope_response;

#[derive(RustEmbed)]
#[folder = "../../dashboard/dist"]
#[allow_missing = true]
struct Assets;

const MISSING: &str = "<!doctype html><meta charset=utf-8><title>GuruConnect</title>\
<body style=\"font-family:sans-serif;max-width:40rem;margin:4rem auto\">\
<h1>GuruConnect</h1><p>The web console was not built into this binary. Build it with \
<code>npm ci &amp;&amp; npm run build</code> in <code>dashboard/</code> (the server's build \
does this automatically when Node.js is installed) and rebuild the server.</p>";

/// Serves a console asset, or `index.html` for client routes.
pub async fn serve(State(state): State<AppState>, req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/api/") || path.starts_with("/ws/") {
        return envelope_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource".to_owned(),
        );
    }
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if let Some(dir) = &state.config.console_dir {
        return from_disk(dir, rel).await;
    }
    // A client route (`/join/<code>`) is answered with index.html under its own type.
    let found = Assets::get(rel)
        .map(|f| (rel, f))
        .or_else(|| Assets::get("index.html").map(|f| ("index.html", f)));
    match found {
        Some((name, file)) => asset_response(name, file.data.into_owned()),
        None => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            MISSING,
        )
            .into_response(),
    }
}

async fn from_disk(dir: &Path, rel: &str) -> Response {
    // Refuse anything that could climb out of the directory.
    let safe = Path::new(rel)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let candidate: PathBuf = if safe {
        dir.join(rel)
    } else {
        dir.join("index.html")
    };
    let (name, bytes) = match tokio::fs::read(&candidate).await {
        Ok(bytes) => (rel.to_owned(), bytes),
        Err(_) => match tokio::fs::read(dir.join("index.html")).await {
            Ok(bytes) => ("index.html".to_owned(), bytes),
            Err(_) => {
                return (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    MISSING,
                )
                    .into_response();
            }
        },
    };
    asset_response(&name, bytes)
}

fn asset_response(name: &str, bytes: Vec<u8>) -> Response {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut response = Response::new(Body::from(bytes));
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    // Hashed bundles never change; the HTML entry point must always be fresh.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
        .headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
