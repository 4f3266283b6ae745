//! The audit trail over HTTP: reading the caller's tenant's records, and recording the proxy's
//! security events in the system tenant's chains.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{parse_query, read_json, require_role, Authed};
use super::page::{audit_cursor, bad_cursor, next_cursor, parse_audit_cursor, parse_limit};
use super::{json_response, rfc3339, AppState, RequestContext};
use crate::identity::Role;
use crate::payments::audit::{AuditAction, AuditContext, AuditEvent, AuditRecord, SYSTEM_TENANT};
use crate::payments::errors::{ApiError, FieldError, Problem};
use crate::payments::store::AuditFilter;

/// Query parameters (utoipa's default would document them as required path parameters).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// e.g. `payment.created`, `auth.login_failed`.
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: String,
    /// Read order across the tenant's chains; `next_cursor` is built from it.
    pub pos: i64,
    /// The chain (lane) this record is linked in, and its position there.
    pub lane: i64,
    pub seq: i64,
    pub created_at: String,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub client_ip: String,
    pub request_id: String,
    pub details: serde_json::Value,
    pub hash: String,
    pub prev_hash: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

fn audit_view(r: &AuditRecord) -> AuditView {
    AuditView {
        id: r.id.clone(),
        pos: r.pos,
        lane: r.lane,
        seq: r.seq,
        created_at: rfc3339(r.created_at),
        actor: r.actor.clone(),
        action: r.action.clone(),
        resource_type: r.resource_type.clone(),
        resource_id: r.resource_id.clone(),
        client_ip: r.client_ip.clone(),
        request_id: r.request_id.clone(),
        details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
        hash: r.hash.clone(),
        prev_hash: r.prev_hash.clone(),
    }
}

fn parse_time(field: &str, raw: &Option<String>) -> Result<Option<i64>, FieldError> {
    match raw {
        None => Ok(None),
        Some(s) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
            .map_err(|_| {
                FieldError::new(
                    field,
                    "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
                )
            }),
    }
}

fn short_filter(field: &str, raw: &Option<String>) -> Result<(), FieldError> {
    match raw {
        Some(s) if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) => {
            Err(FieldError::new(
                field,
                "must be 1 to 128 characters without control characters",
            ))
        }
        _ => Ok(()),
    }
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, description = "Newest first", body = AuditPage), (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "A query that does not parse (unknown parameter, not a number)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad value: limit out of range, a time that is not RFC 3339, a bad cursor", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list_audit(
    State(state): State<AppState>,
    Authed(p): Authed,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Auditor])?;
    let q = parse_query(query)?;
    let mut errors = Vec::new();
    for (field, v) in [
        ("action", &q.action),
        ("resource_type", &q.resource_type),
        ("resource_id", &q.resource_id),
    ] {
        if let Err(e) = short_filter(field, v) {
            errors.push(e);
        }
    }
    let since = parse_time("since", &q.since)
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let until = parse_time("until", &q.until)
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let before_pos = match q.cursor.as_deref() {
        None => None,
        Some(c) => match parse_audit_cursor(c) {
            Some(pos) => Some(pos),
            None => {
                errors.push(bad_cursor());
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let limit = parse_limit(q.limit)?;
    let filter = AuditFilter {
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        since,
        until,
        before_pos,
        limit,
    };
    let rows = state.store().list_audit(&p.tenant_id, &filter).await?;
    let next_cursor = next_cursor(&rows, limit, |r| audit_cursor(r.pos));
    Ok(json_response(
        StatusCode::OK,
        &AuditPage {
            items: rows.iter().map(audit_view).collect(),
            next_cursor,
        },
    ))
}

/// A batch of security events from the proxy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityEventBatch {
    /// 1 to 100 events.
    pub events: Vec<SecurityEvent>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvent {
    /// What the proxy saw, e.g. `auth_failed`, `token_revoked`, `refresh_reuse` (a-z, 0-9, `_`, `.`).
    pub kind: String,
    /// The tenant it concerns: the record goes to that tenant's audit chain (an unknown or absent
    /// tenant: the system tenant's).
    pub tenant_id: Option<String>,
    pub subject: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub route: Option<String>,
    pub reason: Option<String>,
    /// Extra facts; must not contain secrets. At most 4 KiB per event.
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Constant-time comparison of a presented token with the configured one.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

const MAX_BATCH: usize = 100;

#[utoipa::path(post, path = "/internal/v1/security-events", tag = "audit", request_body = SecurityEventBatch, security(("internal" = [])),
    responses((status = 202, description = "Recorded, each in its tenant's audit chain"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No internal token is configured")))]
pub(super) async fn security_event(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.config().internal_token else {
        return Err(ApiError::NotFound);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::MissingToken)?;
    if !token_matches(presented.trim().as_bytes(), expected.expose()) {
        return Err(ApiError::InvalidToken);
    }
    let (batch, _) = read_json::<SecurityEventBatch>(&state, &headers, body).await?;
    let mut errors = Vec::new();
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        errors.push(FieldError::new(
            "events",
            format!("must hold 1 to {MAX_BATCH} events"),
        ));
    }
    for (i, event) in batch.events.iter().enumerate() {
        check_event(i, event, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    for event in batch.events {
        let tenant = match &event.tenant_id {
            Some(t) if state.store().tenant_exists(t).await? => t.clone(),
            _ => SYSTEM_TENANT.to_owned(),
        };
        let actx = AuditContext {
            actor: "proxy".into(),
            client_ip: event
                .client_ip
                .clone()
                .unwrap_or_else(|| ctx.client_ip.to_string()),
            request_id: event.request_id.clone().unwrap_or(ctx.request_id.clone()),
        };
        let mut details = serde_json::json!({
            "subject": event.subject,
            "route": event.route,
            "reason": event.reason,
            "details": event.details,
        });
        if tenant == SYSTEM_TENANT {
            details["tenant_id"] = event.tenant_id.clone().into();
        }
        let ev = AuditEvent::new(
            &actx,
            &tenant,
            AuditAction::ProxySecurityEvent,
            &event.kind,
            details,
        );
        state.store().append_audit(&ev).await?;
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

fn check_event(i: usize, event: &SecurityEvent, errors: &mut Vec<FieldError>) {
    let at = |f: &str| format!("events[{i}].{f}");
    if event.kind.is_empty()
        || event.kind.len() > 64
        || !event
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        errors.push(FieldError::new(
            at("kind"),
            "must be 1 to 64 of a-z, 0-9, '_' and '.'",
        ));
    }
    for (name, v) in [
        ("tenant_id", &event.tenant_id),
        ("request_id", &event.request_id),
        ("subject", &event.subject),
        ("route", &event.route),
        ("reason", &event.reason),
    ] {
        if let Err(mut e) = short_filter(name, v) {
            e.field = at(name);
            errors.push(e);
        }
    }
    if let Some(ip) = &event.client_ip {
        if ip.parse::<IpAddr>().is_err() {
            errors.push(FieldError::new(at("client_ip"), "must be an IP address"));
        }
    }
    if serde_json::Value::Object(event.details.clone())
        .to_string()
        .len()
        > 4096
    {
        errors.push(FieldError::new(at("details"), "must be at most 4 KiB"));
    }
}
