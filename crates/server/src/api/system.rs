//! Liveness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;
use crate::auth::{Role, authenticate_login};

/// `/health` and `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// Liveness plus a database check; 503 while the database is unreachable.
async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "database": "ok", "version": env!("CARGO_PKG_VERSION") }))
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "degraded", "database": "unavailable", "version": env!("CARGO_PKG_VERSION") })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if !state.config.metrics_public {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        match authenticate_login(&state, token).await {
            Ok(user) if user.role == Role::Admin => {}
            Ok(_) => {
                return crate::error::ApiError::Forbidden("administrator role required")
                    .into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `/download/guruconnect-agent`: the Linux agent binary for site installers, when
/// `agent_binary_path` is configured.
pub fn download_router() -> Router<AppState> {
    Router::new().route("/download/guruconnect-agent", get(download_agent))
}

async fn download_agent(State(state): State<AppState>) -> Response {
    let Some(path) = state.config.agent_binary_path.clone() else {
        return crate::error::ApiError::NotFound("no agent binary is configured on this server")
            .into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"guruconnect-agent\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            crate::error::ApiError::internal(anyhow::anyhow!("reading agent_binary_path: {e}"))
                .into_response()
        }
    }
}
