//! Operability: liveness, readiness, Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::problem::ApiError;
use crate::state::AppState;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
pub async fn readyz(State(s): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    s.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready: the store does not answer");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the store does not answer")
    })?;
    Ok("ready\n")
}

/// Prometheus text exposition of the process's metrics.
pub async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
