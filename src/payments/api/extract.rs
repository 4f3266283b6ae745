//! What every handler takes from a request before it does anything: the authenticated caller
//! ([`Authed`]) and its role, a strict JSON body, a query string.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::identity::Role;
use crate::payments::auth::Caller;
use crate::payments::errors::ApiError;

/// A caller whose access token verified and whose session is still active.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::MissingToken)?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(ApiError::MissingToken),
        };
        let principal = state.config().tokens.verify(token).map_err(|e| {
            tracing::debug!(error = %e, "access token rejected");
            ApiError::InvalidToken
        })?;
        // Logout, refresh-token reuse and password changes revoke the session: its access tokens
        // stop working at once, not when they expire.
        if !state.store().session_active(&principal.session_id).await? {
            return Err(ApiError::InvalidToken);
        }
        super::note_caller(&principal.tenant_id, &principal.user_id);
        Ok(Authed(principal))
    }
}

/// Authorization on the caller's role (403 otherwise).
pub(super) fn require_role(p: &Caller, allowed: &[Role]) -> Result<(), ApiError> {
    if allowed.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Read a strict JSON body: `application/json`, within the size limit, no unknown fields, no trailing data.
pub(super) async fn read_json<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(T, Bytes), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = read_body(state, headers, body).await?;
    let value = parse_json(&bytes)?;
    Ok((value, bytes))
}

/// Read a body of any type within the size limit (the webhook authenticates the raw bytes).
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = state.config().max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge);
    }
    let read =
        tokio::time::timeout(Duration::from_secs(10), axum::body::to_bytes(body, limit)).await;
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::BodyTooLarge),
        Err(_) => Err(ApiError::MalformedBody {
            detail: "request body was not received in time".into(),
            field: None,
        }),
    }
}

/// Parse JSON strictly, naming the path of the field at fault.
pub(super) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::MalformedBody {
            detail: e.inner().to_string(),
            field: (path != ".").then_some(path),
        }
    })?;
    de.end().map_err(|e| ApiError::MalformedBody {
        detail: e.to_string(),
        field: None,
    })?;
    Ok(value)
}

/// A query string that failed to parse is a 400 with axum's explanation.
pub(super) fn parse_query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::InvalidQuery(e.body_text()))
}
