//! The control API on the admin port: revocations and lockouts. Every call needs
//! `Authorization: Bearer <admin token>` (from `--admin-token-file` or `WARD_ADMIN_TOKEN`; there
//! is no default, and without one the API is off). The token is compared in constant time and
//! never logged. `ward revoke`, `ward revocations list` and `ward lockout show|clear` call it.
//!
//! - `GET /revocations`: every live revocation.
//! - `POST /revocations` `{"kind": "token"|"session"|"subject", "id": "…", "before": unix-seconds?,
//!   "ttl_seconds": n?}`: revoke (on every replica, through Redis, when there is one). `before`
//!   applies to subjects (default: now, so every token issued so far); `ttl_seconds` is how long
//!   the entry is kept (default: the policy's `max_token_lifetime`).
//! - `GET /lockouts?route=R&value=V&value=…` (the route's identity fields, in order) or
//!   `GET /lockouts?route=R&ip=A`: the key's state. `DELETE` with the same query clears it.

use std::net::IpAddr;

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::pipeline::Shared;
use super::stage::session::identity_key;
use crate::state::revocation::{Entry, Kind, MAX_ID};

pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
    Answer {
        status,
        body: body.to_string(),
    }
}

fn error(status: StatusCode, message: &str) -> Answer {
    answer(status, serde_json::json!({ "error": message }))
}

/// Whether `path` belongs to the control API.
pub fn handles(path: &str) -> bool {
    path == "/revocations" || path == "/lockouts"
}

pub async fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Incoming,
) -> Answer {
    let Some(expected) = &shared.admin_token else {
        return error(
            StatusCode::FORBIDDEN,
            "the control API is off: start ward with --admin-token-file or WARD_ADMIN_TOKEN",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if presented.is_empty() || !bool::from(presented.as_bytes().ct_eq(expected)) {
        return error(StatusCode::UNAUTHORIZED, "a valid admin token is required");
    }
    match (path, method) {
        ("/revocations", &Method::GET) => answer(
            StatusCode::OK,
            serde_json::json!({
                "backend": shared.revocations.backend_name(),
                "synced": shared.revocations.is_synced(),
                "revocations": shared.revocations.list(),
            }),
        ),
        ("/revocations", &Method::POST) => revoke(shared, body).await,
        ("/lockouts", &Method::GET | &Method::DELETE) => lockout(shared, method, query).await,
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    kind: Kind,
    id: String,
    before: Option<i64>,
    ttl_seconds: Option<u64>,
}

async fn revoke(shared: &Shared, body: Incoming) -> Answer {
    let bytes: Bytes = match Limited::new(body, 8 * 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body must be at most 8 KiB"),
    };
    let req: RevokeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid request: {e}")),
    };
    if req.id.is_empty() || req.id.len() > MAX_ID || req.id.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "id must be 1 to 256 characters without control characters",
        );
    }
    let now = crate::state::now_secs();
    let policy = shared.policy.snapshot();
    let ttl = req.ttl_seconds.unwrap_or_else(|| {
        policy
            .sessions
            .revocation
            .map_or(3600, |r| r.max_token_lifetime.as_secs())
    });
    let before = match req.kind {
        Kind::Subject => Some(req.before.unwrap_or(now + 1)),
        Kind::Token | Kind::Session if req.before.is_some() => {
            return error(StatusCode::BAD_REQUEST, "before applies to subjects only")
        }
        Kind::Token | Kind::Session => None,
    };
    let entry = Entry {
        kind: req.kind,
        id: req.id,
        before,
        expires_at: now + ttl.min(365 * 24 * 3600) as i64,
    };
    match shared.revocations.revoke(entry.clone()).await {
        Ok(()) => {
            tracing::info!(
                kind = entry.kind.as_str(),
                "revocation added through the control API"
            );
            answer(
                StatusCode::CREATED,
                serde_json::to_value(&entry).unwrap_or_default(),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the revocation store is unavailable: {e}"),
        ),
    }
}

async fn lockout(shared: &Shared, method: &Method, query: Option<&str>) -> Answer {
    let (mut route, mut values, mut ip) = (None, Vec::new(), None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "route" => route = Some(v),
            "value" => values.push(v),
            "ip" => ip = Some(v),
            _ => return error(StatusCode::BAD_REQUEST, &format!("unknown parameter `{k}`")),
        }
    }
    let policy = shared.policy.snapshot();
    let Some(route) = route else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the login route: route=<name>",
        );
    };
    let Some(rule) = policy
        .routes
        .iter()
        .find(|r| *r.name == *route)
        .and_then(|r| r.lockout.as_ref())
    else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("route `{route}` has no lockout"),
        );
    };
    let key = match (ip, values.is_empty()) {
        (Some(ip), true) => match ip.parse::<IpAddr>() {
            Ok(ip) => format!("ip:{ip}"),
            Err(_) => return error(StatusCode::BAD_REQUEST, "ip must be an IP address"),
        },
        (None, false) if values.len() == rule.identity.len() => {
            let sessions_key = policy
                .sessions
                .lockout_key
                .as_ref()
                .map_or(&shared.own_lockout_key[..], |k| &k.0[..]);
            format!("id:{}", identity_key(sessions_key, &values))
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "give ip=<address>, or one value= per identity field: {}",
                    rule.identity.join(", ")
                ),
            )
        }
    };
    let tuning = &policy.server.redis;
    if method == Method::DELETE {
        return match shared.lockouts.clear(&key, tuning).await {
            Ok(()) => {
                tracing::info!(route, "lockout cleared through the control API");
                answer(StatusCode::OK, serde_json::json!({ "cleared": true }))
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
    }
    match shared.lockouts.show(&key, tuning).await {
        Ok(state) => {
            let now = crate::state::now_ms();
            answer(
                StatusCode::OK,
                serde_json::json!({
                    "key": key.chars().take(19).collect::<String>(),
                    "state": state,
                    "locked": state.is_some_and(|s| s.locked_until > now),
                }),
            )
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `%XX` and `+` decoding for query values (identities hold `@`, spaces, non-ASCII).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%40b.c"), "a@b.c");
        assert_eq!(percent_decode("caf%C3%A9+x"), "café x");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
