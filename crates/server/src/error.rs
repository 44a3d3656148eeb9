//! The one HTTP error type and its envelope (SPEC §4.11).
//!
//! Every error leaves the server as
//! `{ "detail", "error_code", "status_code", "correlation_id" }`. Internal causes are
//! logged with the request's correlation id and never sent to the client.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use guruconnect_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

tokio::task_local! {
    /// Correlation id of the request being handled on this task.
    pub static CORRELATION_ID: String;
}

/// The current request's correlation id, or `-` outside a request.
pub fn correlation_id() -> String {
    CORRELATION_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a client-facing message.
    #[error("{0}")]
    BadRequest(String),
    /// 401; the message never says whether a user exists.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 404 `not_configured`: the server lacks what the request needs (the detail says
    /// which setting to set).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 422 validation failure.
    #[error("{0}")]
    Validation(String),
    /// 429 with the seconds to wait.
    #[error("too many requests; retry in {0} s")]
    RateLimited(u64),
    /// 503: the database is unreachable.
    #[error("service temporarily unavailable")]
    Unavailable,
    /// 507: the database's disk is full; nothing was written.
    #[error("the server's storage is full; nothing was saved")]
    StorageFull,
    /// 500; the cause is logged, never returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The JSON error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    /// Human-readable, safe to show.
    pub detail: String,
    /// Stable machine-readable code.
    pub error_code: &'static str,
    /// HTTP status.
    pub status_code: u16,
    /// Same id as the `X-Request-Id` response header and the server log line.
    pub correlation_id: String,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotConfigured(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Validation(_) => "validation_failed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable => "service_unavailable",
            ApiError::StorageFull => "storage_full",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// Wraps any internal failure.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }
}

/// Builds the envelope response for a status, code and detail.
pub fn envelope_response(status: StatusCode, code: &'static str, detail: String) -> Response {
    let body = ErrorEnvelope {
        detail,
        error_code: code,
        status_code: status.as_u16(),
        correlation_id: correlation_id(),
    };
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(EnvelopeMarker);
    response
}

/// Marks a response whose body already is the envelope.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeMarker;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(correlation_id = %correlation_id(), error = ?cause, "internal error");
            }
            ApiError::Unavailable => {
                tracing::warn!(correlation_id = %correlation_id(), "database unavailable");
            }
            ApiError::StorageFull => {
                tracing::error!(correlation_id = %correlation_id(), "write refused: database storage is full");
            }
            _ => {}
        }
        let status = self.status();
        let mut response = envelope_response(status, self.code(), self.to_string());
        if let ApiError::RateLimited(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Conflict(what) => ApiError::Conflict(what.to_owned()),
            StoreError::Unavailable(_) => ApiError::Unavailable,
            StoreError::StorageFull(_) => ApiError::StorageFull,
            StoreError::Invalid(_) => ApiError::Validation("a value is not valid".into()),
            other => ApiError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        ApiError::internal(err)
    }
}

/// `Json` whose rejections become envelopes without library text.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(value)) => from_json_value(value).map(ApiJson),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// Parses a JSON body read as bytes (for handlers whose body is optional), with the same
/// checks and answers as [`ApiJson`].
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let value = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("malformed JSON body".into()))?;
    from_json_value(value)
}

fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    // PostgreSQL cannot store NUL in text and no field has a use for it: refuse it here,
    // the same way on both backends.
    if contains_nul(&value) {
        return Err(ApiError::Validation(
            "text must not contain NUL characters".into(),
        ));
    }
    serde_json::from_value(value).map_err(|_| {
        ApiError::Validation("request body has missing or wrongly typed fields".into())
    })
}

fn contains_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest("expected Content-Type: application/json".into())
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest("malformed JSON body".into()),
        JsonRejection::JsonDataError(_) => {
            ApiError::Validation("request body has missing or wrongly typed fields".into())
        }
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::BadRequest("unreadable request body".into()),
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
