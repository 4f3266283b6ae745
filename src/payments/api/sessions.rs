//! Sessions: login, refresh-token rotation, logout and password change (`/v1/auth/*`).
//!
//! Every outcome is audited in the same transaction as its effect. Whether a known user may log in
//! and how failures count toward a lock is `domain::lockout`'s decision; the store applies it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{read_json, Authed};
use super::{json_response, now_ms, AppState, RequestContext};
use crate::payments::audit::{AuditAction, AuditEvent, SYSTEM_TENANT};
use crate::payments::auth::{self, Caller};
use crate::payments::domain::lockout;
use crate::payments::errors::{invalid, ApiError, FieldError, Problem};
use crate::payments::store::{NewSession, RefreshOutcome};
use crate::payments::validation;
use crate::state::revocation::Kind;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Tenant slug.
    pub tenant: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds until the refresh token expires (it is single-use).
    pub refresh_expires_in: u64,
}

/// The session a token pair belongs to, named in a response header so that a proxy enforcing
/// refresh-token single use knows which family to revoke if the refresh token comes back.
pub const SESSION_HEADER: &str = "x-session-id";

fn token_response(state: &AppState, p: &Caller, refresh_token: String) -> Response {
    let cfg = state.config();
    let access = cfg
        .tokens
        .issue(&p.user_id, &p.tenant_id, p.role, &p.session_id);
    let mut response = json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: cfg.tokens.access_ttl.as_secs(),
            refresh_token,
            refresh_expires_in: cfg.refresh_ttl.as_secs(),
        },
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&p.session_id) {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// Tells the proxies (through Redis, or the in-process copy of `ward demo`) that these tokens
/// are revoked, so the edge refuses them at once instead of when they expire. The service's own
/// checks do not depend on it: a failure is logged, never an error for the caller.
pub(super) async fn publish_revocation(
    state: &AppState,
    kind: crate::state::revocation::Kind,
    id: &str,
    before: Option<i64>,
) {
    let Some(revocations) = &state.config().revocations else {
        return;
    };
    let now = crate::state::now_secs();
    let entry = crate::state::revocation::Entry {
        kind,
        id: id.to_owned(),
        before,
        // No access token issued before this moment outlives its TTL (plus the verifiers' leeway).
        expires_at: now + state.config().tokens.access_ttl.as_secs() as i64 + 60,
    };
    if let Err(e) = revocations.revoke(entry).await {
        tracing::error!(error = %e, kind = kind.as_str(), "cannot publish a revocation to the proxies");
    }
}

fn new_session(state: &AppState) -> (NewSession, String) {
    let (token, hash) = auth::new_refresh_token();
    let session = NewSession {
        session_id: uuid::Uuid::new_v4().to_string(),
        refresh_hash: hash,
        refresh_expires_at: now_ms() + state.config().refresh_ttl.as_millis() as i64,
    };
    (session, token)
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = TokenResponse),
    (status = 401, description = "Unknown tenant or user, wrong password, or locked account: one answer for all", body = Problem, content_type = "application/problem+json"),
    (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn login(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, _) = read_json::<LoginRequest>(&state, &headers, body).await?;
    let mut errors = Vec::new();
    let slug = validation::parse_slug(&req.tenant)
        .map_err(|e| errors.push(e))
        .ok();
    let email = validation::parse_email(&req.email)
        .map_err(|e| errors.push(e))
        .ok();
    if req.password.is_empty() || req.password.chars().count() > validation::PASSWORD_MAX_CHARS {
        errors.push(FieldError::new("password", "must be 1 to 256 characters"));
    }
    let (Some(slug), Some(email), true) = (slug, email, errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let store = state.store();
    let tenant = store.tenant_by_slug(&slug).await?;
    let user = match &tenant {
        Some(t) => store.user_for_login(&t.id, &email).await?,
        None => None,
    };
    // Always verify a hash, even for an unknown user, so both cases take the same time.
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| state.dummy_hash().to_string());
    let password_ok = state.verify_password(req.password, phc).await;
    let now = now_ms();
    let masked = validation::mask_email(&email);
    let metrics = state.metrics();
    let Some(user) = user else {
        let tenant_id = tenant
            .as_ref()
            .map(|t| t.id.as_str())
            .unwrap_or(SYSTEM_TENANT);
        let ev = AuditEvent::new(
            &ctx.audit("anonymous"),
            tenant_id,
            AuditAction::LoginFailed,
            &masked,
            serde_json::json!({ "email": masked, "tenant": slug, "reason": "unknown_user" }),
        );
        store.append_audit(&ev).await?;
        metrics.auth_event("login_failed");
        return Err(ApiError::InvalidCredentials);
    };
    match lockout::check_login(password_ok, user.locked_until, now) {
        Ok(()) => {
            let (session, refresh_token) = new_session(&state);
            let ev = AuditEvent::new(
                &ctx.audit(format!("user:{}", user.id)),
                &user.tenant_id,
                AuditAction::LoginSucceeded,
                &session.session_id,
                serde_json::json!({ "email": masked }),
            );
            store.login_succeeded(&user, &session, &ev).await?;
            metrics.auth_event("login_succeeded");
            let principal = Caller {
                user_id: user.id,
                tenant_id: user.tenant_id,
                role: user.role,
                session_id: session.session_id,
            };
            Ok(token_response(&state, &principal, refresh_token))
        }
        Err(refused) => {
            let actx = ctx.audit(format!("user:{}", user.id));
            let ev = AuditEvent::new(
                &actx,
                &user.tenant_id,
                AuditAction::LoginFailed,
                &user.id,
                serde_json::json!({ "email": masked, "reason": refused.as_str() }),
            );
            let lock_ev = AuditEvent::new(
                &actx,
                &user.tenant_id,
                AuditAction::Lockout,
                &user.id,
                serde_json::json!({
                    "email": masked,
                    "locked_for_seconds": state.config().lockout.duration.as_secs(),
                }),
            );
            let locked_now = store
                .login_failed(&user, state.config().lockout, &ev, &lock_ev)
                .await?;
            metrics.auth_event("login_failed");
            if locked_now {
                metrics.auth_event("lockout");
            }
            Err(ApiError::InvalidCredentials)
        }
    }
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, description = "A new access token and a new refresh token; the old one is spent", body = TokenResponse),
    (status = 401, description = "Invalid, expired or revoked; a reused token revokes its whole session", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Not a refresh token's shape (1 to 256 characters)", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, _) = read_json::<RefreshRequest>(&state, &headers, body).await?;
    if req.refresh_token.is_empty() || req.refresh_token.len() > 256 {
        return Err(invalid("refresh_token", "must be 1 to 256 characters"));
    }
    let (next, token) = new_session(&state);
    let actx = ctx.audit("user");
    // Tenant, actor and resource are filled in by the store once it knows the token's session.
    let ok_ev = AuditEvent::new(
        &actx,
        SYSTEM_TENANT,
        AuditAction::Refresh,
        "",
        serde_json::json!({}),
    );
    let reuse_ev = AuditEvent::new(
        &actx,
        SYSTEM_TENANT,
        AuditAction::RefreshReuseDetected,
        "",
        serde_json::json!({ "effect": "session revoked" }),
    );
    let hash = auth::refresh_token_hash(&req.refresh_token);
    let metrics = state.metrics();
    match state
        .store()
        .rotate_refresh(&hash, &next, &ok_ev, &reuse_ev)
        .await?
    {
        RefreshOutcome::Rotated {
            user_id,
            tenant_id,
            role,
            session_id,
        } => {
            metrics.auth_event("refresh");
            let principal = Caller {
                user_id,
                tenant_id,
                role,
                session_id,
            };
            Ok(token_response(&state, &principal, token))
        }
        RefreshOutcome::ReuseDetected { session_id } => {
            tracing::warn!("refresh token reuse detected; session revoked");
            metrics.auth_event("refresh_reuse_detected");
            publish_revocation(&state, Kind::Session, &session_id, None).await;
            Err(ApiError::InvalidRefreshToken)
        }
        RefreshOutcome::Invalid => Err(ApiError::InvalidRefreshToken),
    }
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "The session and all its tokens are revoked"),
    (status = 401, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn logout(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
) -> Result<Response, ApiError> {
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::Logout,
        &p.session_id,
        serde_json::json!({}),
    );
    state
        .store()
        .revoke_session(&p.tenant_id, &p.session_id, "logout", &ev)
        .await?;
    state.metrics().auth_event("logout");
    publish_revocation(&state, Kind::Session, &p.session_id, None).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    pub current_password: String,
    pub new_password: String,
}

#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", security(("bearer" = [])), request_body = PasswordChangeRequest, responses(
    (status = 204, description = "Password changed; every session of the user is revoked"),
    (status = 401, body = Problem, content_type = "application/problem+json"),
    (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (req, _) = read_json::<PasswordChangeRequest>(&state, &headers, body).await?;
    validation::check_new_password("new_password", &req.new_password)
        .map_err(|e| ApiError::Invalid(vec![e]))?;
    let user = state
        .store()
        .user_by_id(&p.tenant_id, &p.user_id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    if !state
        .verify_password(req.current_password, user.password_hash.clone())
        .await
    {
        let actx = ctx.audit(format!("user:{}", p.user_id));
        let masked = validation::mask_email(&user.email);
        let ev = AuditEvent::new(
            &actx,
            &p.tenant_id,
            AuditAction::LoginFailed,
            &p.user_id,
            serde_json::json!({ "email": masked, "reason": "wrong_current_password" }),
        );
        let lock_ev = AuditEvent::new(
            &actx,
            &p.tenant_id,
            AuditAction::Lockout,
            &p.user_id,
            serde_json::json!({ "email": masked }),
        );
        state
            .store()
            .login_failed(&user, state.config().lockout, &ev, &lock_ev)
            .await?;
        return Err(ApiError::InvalidCredentials);
    }
    let new_hash = state.hash_password(req.new_password).await;
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::PasswordChanged,
        &p.user_id,
        serde_json::json!({ "effect": "all sessions revoked" }),
    );
    state
        .store()
        .change_password(&p.tenant_id, &p.user_id, &new_hash, &ev)
        .await?;
    state.metrics().auth_event("password_changed");
    // Every token of the user issued up to now (`iat` is in whole seconds: this second too).
    let before = crate::state::now_secs() + 1;
    publish_revocation(&state, Kind::Subject, &p.user_id, Some(before)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
