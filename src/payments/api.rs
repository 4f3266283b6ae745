//! The HTTP surface of `ward payments`: routes, handlers and the OpenAPI document generated from them.
//!
//! [`handle`] is the per-request shell: request id, client IP, logging and metrics around the
//! router. Each handler then reads top to bottom: authenticate (the [`Authed`] extractor verifies
//! the access token and its session), authorize (role and tenant), parse and validate the input
//! once, call the store (which writes the audit record in the same transaction), answer.
//! Every error is an [`ApiError`], rendered as `application/problem+json`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};

use super::audit::{AuditContext, AuditEvent, AuditRecord, SYSTEM_TENANT};
use super::auth::{self, Caller};
use super::errors::{invalid, ApiError, FieldError, Problem, REQUEST_ID};
use super::metrics::Metrics;
use super::store::{
    AuditFilter, IdempotentOutcome, NewSession, NewUser, PaymentFilter, PaymentRow, RefreshOutcome,
    Store, StoreError, StoredResponse, Transition, TransitionOutcome,
};
use super::{validation, webhook, Config};
use crate::identity::Role;

/// Shared state of the service: configuration, store, metrics.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    store: Store,
    metrics: Metrics,
    /// Verified against when the user does not exist, so that unknown users cost the same time.
    dummy_hash: String,
    /// argon2id uses 19 MiB per hash; bound how many run at once.
    hash_permits: Semaphore,
}

impl AppState {
    pub fn new(config: Config, store: Store) -> Self {
        let dummy_hash = auth::hash_password(&auth::generate_password());
        AppState(Arc::new(Inner {
            config,
            store,
            metrics: Metrics::new(),
            dummy_hash,
            hash_permits: Semaphore::new(4),
        }))
    }

    fn store(&self) -> &Store {
        &self.0.store
    }

    fn config(&self) -> &Config {
        &self.0.config
    }

    async fn hash_password(&self, password: String) -> String {
        let _permit = self
            .0
            .hash_permits
            .acquire()
            .await
            .expect("semaphore is never closed");
        tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .expect("password hashing does not panic")
    }

    async fn verify_password(&self, password: String, phc: String) -> bool {
        let _permit = self
            .0
            .hash_permits
            .acquire()
            .await
            .expect("semaphore is never closed");
        tokio::task::spawn_blocking(move || auth::verify_password(&password, &phc))
            .await
            .expect("password verification does not panic")
    }
}

/// Per-request facts established before routing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub client_ip: IpAddr,
}

impl RequestContext {
    fn audit(&self, actor: impl Into<String>) -> AuditContext {
        AuditContext {
            actor: actor.into(),
            client_ip: self.client_ip.to_string(),
            request_id: self.request_id.clone(),
        }
    }
}

#[derive(Clone)]
struct RouteLabel(String);

/// Build the router. Route-level concerns only; the request shell is [`handle`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/password", post(change_password))
        .route("/v1/users", post(create_user))
        .route("/v1/payments", post(create_payment).get(list_payments))
        .route("/v1/payments/{id}", get(get_payment))
        .route("/v1/payments/{id}/cancel", post(cancel_payment))
        .route("/v1/webhooks/psp", post(psp_webhook))
        .route("/v1/audit", get(list_audit))
        .route("/internal/v1/security-events", post(security_event))
        .route_layer(middleware::from_fn(tag_route))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Remember the route template so the shell can label metrics without raw paths.
async fn tag_route(matched: MatchedPath, req: Request<Body>, next: Next) -> Response {
    let label = matched.as_str().to_string();
    let mut response = next.run(req).await;
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// The request shell: establish request id and client IP, run the router inside the request's
/// span, then log one line and record metrics.
pub async fn handle(
    router: Router,
    state: AppState,
    peer: SocketAddr,
    mut req: Request<hyper::body::Incoming>,
) -> Response {
    let started = Instant::now();
    let request_id = request_id_from(req.headers());
    let client_ip = client_ip(&state.config().trusted_proxies, peer, req.headers());
    let method = req.method().clone();
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        client_ip,
    });
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = REQUEST_ID
        .scope(request_id.clone(), router.oneshot(req))
        .instrument(span.clone())
        .await
        .unwrap_or_else(|never: Infallible| match never {});
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    let status = response.status();
    let elapsed = started.elapsed();
    let m = &state.0.metrics;
    m.requests_total
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    m.request_duration_seconds
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    // Tokens, payments and audit records must not be cached; a handler may say otherwise (JWKS).
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            route = %route,
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            client_ip = %client_ip,
            "request"
        )
    });
    response
}

/// Use the caller's X-Request-Id when it is sane (the proxy sends one), else make one.
fn request_id_from(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The client IP: the rightmost X-Forwarded-For entry when the peer is a trusted proxy (loopback
/// or configured), otherwise the peer itself. Anyone else could write any X-Forwarded-For.
fn client_ip(trusted: &[IpAddr], peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer_ip = peer.ip();
    if peer_ip.is_loopback() || trusted.contains(&peer_ip) {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    peer_ip
}

/// Read a strict JSON body: `application/json`, within the size limit, no unknown fields, no trailing data.
async fn read_json<T: DeserializeOwned>(
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

async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
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

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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

fn parse_query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::InvalidQuery(e.body_text()))
}

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
        Ok(Authed(principal))
    }
}

fn require_role(p: &Caller, allowed: &[Role]) -> Result<(), ApiError> {
    if allowed.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (status, Json(value)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Operational endpoints

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is up")))]
async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "The database answers"),
    (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json")))]
async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.store().ping().await.map_err(ApiError::Unavailable)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": "ready" }),
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.0.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "This document")))]
async fn openapi() -> Response {
    json_response(StatusCode::OK, &ApiDoc::openapi())
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, description = "Public keys that verify access tokens (JWK Set)")))]
async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = json_response(StatusCode::OK, &state.config().tokens.keys.jwks());
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Authentication

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

fn token_response(state: &AppState, p: &Caller, refresh_token: String) -> Response {
    let cfg = state.config();
    let access = cfg
        .tokens
        .issue(&p.user_id, &p.tenant_id, p.role, &p.session_id);
    json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: cfg.tokens.access_ttl.as_secs(),
            refresh_token,
            refresh_expires_in: cfg.refresh_ttl.as_secs(),
        },
    )
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
async fn login(
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
        .unwrap_or_else(|| state.0.dummy_hash.clone());
    let password_ok = state.verify_password(req.password, phc).await;
    let now = now_ms();
    let masked = validation::mask_email(&email);
    let metrics = &state.0.metrics;
    match user {
        Some(user) if password_ok && user.locked_until.is_none_or(|t| t <= now) => {
            let (session, refresh_token) = new_session(&state);
            let ev = AuditEvent::new(
                &ctx.audit(format!("user:{}", user.id)),
                &user.tenant_id,
                "auth.login_succeeded",
                "session",
                &session.session_id,
                serde_json::json!({ "email": masked }),
            );
            store.login_succeeded(&user, &session, &ev).await?;
            metrics.auth_event("login_succeeded");
            let role = Role::parse(&user.role)
                .ok_or_else(|| ApiError::Internal(StoreError::Corrupt("role".into())))?;
            let principal = Caller {
                user_id: user.id,
                tenant_id: user.tenant_id,
                role,
                session_id: session.session_id,
            };
            Ok(token_response(&state, &principal, refresh_token))
        }
        Some(user) => {
            let locked = user.locked_until.is_some_and(|t| t > now);
            let actx = ctx.audit(format!("user:{}", user.id));
            let reason = if locked {
                "account_locked"
            } else {
                "wrong_password"
            };
            let ev = AuditEvent::new(
                &actx,
                &user.tenant_id,
                "auth.login_failed",
                "user",
                &user.id,
                serde_json::json!({ "email": masked, "reason": reason }),
            );
            let lock_ev = AuditEvent::new(
                &actx,
                &user.tenant_id,
                "auth.lockout",
                "user",
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
        None => {
            let tenant_id = tenant
                .as_ref()
                .map(|t| t.id.as_str())
                .unwrap_or(SYSTEM_TENANT);
            let ev = AuditEvent::new(
                &ctx.audit("anonymous"),
                tenant_id,
                "auth.login_failed",
                "user",
                &masked,
                serde_json::json!({ "email": masked, "tenant": slug, "reason": "unknown_user" }),
            );
            store.append_audit(&ev).await?;
            metrics.auth_event("login_failed");
            Err(ApiError::InvalidCredentials)
        }
    }
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, description = "A new access token and a new refresh token; the old one is spent", body = TokenResponse),
    (status = 401, description = "Invalid, expired or revoked; a reused token revokes its whole session", body = Problem, content_type = "application/problem+json")))]
async fn refresh(
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
        "auth.refresh",
        "session",
        "",
        serde_json::json!({}),
    );
    let reuse_ev = AuditEvent::new(
        &actx,
        SYSTEM_TENANT,
        "auth.refresh_reuse_detected",
        "session",
        "",
        serde_json::json!({ "effect": "session revoked" }),
    );
    let hash = auth::refresh_token_hash(&req.refresh_token);
    let metrics = &state.0.metrics;
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
            let role = Role::parse(&role)
                .ok_or_else(|| ApiError::Internal(StoreError::Corrupt("role".into())))?;
            let principal = Caller {
                user_id,
                tenant_id,
                role,
                session_id,
            };
            Ok(token_response(&state, &principal, token))
        }
        RefreshOutcome::ReuseDetected => {
            tracing::warn!("refresh token reuse detected; session revoked");
            metrics.auth_event("refresh_reuse_detected");
            Err(ApiError::InvalidRefreshToken)
        }
        RefreshOutcome::Invalid => Err(ApiError::InvalidRefreshToken),
    }
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "The session and all its tokens are revoked"),
    (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn logout(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
) -> Result<Response, ApiError> {
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        "auth.logout",
        "session",
        &p.session_id,
        serde_json::json!({}),
    );
    state
        .store()
        .revoke_session(&p.tenant_id, &p.session_id, "logout", &ev)
        .await?;
    state.0.metrics.auth_event("logout");
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
async fn change_password(
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
            "auth.login_failed",
            "user",
            &p.user_id,
            serde_json::json!({ "email": masked, "reason": "wrong_current_password" }),
        );
        let lock_ev = AuditEvent::new(
            &actx,
            &p.tenant_id,
            "auth.lockout",
            "user",
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
        "auth.password_changed",
        "user",
        &p.user_id,
        serde_json::json!({ "effect": "all sessions revoked" }),
    );
    state
        .store()
        .change_password(&p.tenant_id, &p.user_id, &new_hash, &ev)
        .await?;
    state.0.metrics.auth_event("password_changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    pub role: Role,
    /// Initial password, at least 12 characters.
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub role: Role,
}

#[utoipa::path(post, path = "/v1/users", tag = "auth", security(("bearer" = [])), request_body = CreateUserRequest, responses(
    (status = 201, body = UserView),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 409, body = Problem, content_type = "application/problem+json"),
    (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin])?;
    let (req, _) = read_json::<CreateUserRequest>(&state, &headers, body).await?;
    let mut errors = Vec::new();
    let email = validation::parse_email(&req.email)
        .map_err(|e| errors.push(e))
        .ok();
    if let Err(e) = validation::check_new_password("password", &req.password) {
        errors.push(e);
    }
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: p.tenant_id.clone(),
        email: email.clone(),
        role: req.role.as_str().to_string(),
        password_hash: state.hash_password(req.password).await,
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        "user.created",
        "user",
        &user.id,
        serde_json::json!({ "email": validation::mask_email(&email), "role": req.role.as_str() }),
    );
    match state.store().create_user(&user, &ev).await {
        Err(StoreError::Duplicate(what)) => return Err(ApiError::AlreadyExists(what.to_string())),
        other => other?,
    }
    Ok(json_response(
        StatusCode::CREATED,
        &UserView {
            id: user.id,
            email,
            role: req.role,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Payments

/// Status of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Refunded,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// The state machine, in one place: the statuses a payment may move to `self` from.
    /// pending → succeeded | failed | cancelled; succeeded → refunded; nothing else.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            PaymentStatus::Pending => &[],
            PaymentStatus::Succeeded => &["pending"],
            PaymentStatus::Failed => &["pending"],
            PaymentStatus::Cancelled => &["pending"],
            PaymentStatus::Refunded => &["succeeded"],
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Decimal string in major units, e.g. "12.50"; at most the currency's minor-unit decimals;
    /// from one minor unit up to 10,000,000 major units.
    pub amount: String,
    /// ISO 4217 alphabetic code, e.g. "EUR".
    pub currency: String,
    /// Free text, NFC-normalized, at most 500 characters, no control characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Payer account reference (IBAN, account number, card token); encrypted at rest, shown masked.
    pub payer_account: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub amount: String,
    pub currency: String,
    pub description: String,
    /// Masked: only the last four characters.
    pub payer_account: String,
    pub status: PaymentStatus,
    pub created_at: String,
    pub updated_at: String,
}

fn payment_view(p: &PaymentRow) -> PaymentView {
    let exponent = validation::parse_currency(&p.currency)
        .map(|c| c.exponent)
        .unwrap_or(2);
    PaymentView {
        id: p.id.clone(),
        amount: validation::format_minor(p.amount_minor, exponent),
        currency: p.currency.clone(),
        description: p.description.clone(),
        payer_account: p.payer_masked.clone(),
        status: PaymentStatus::parse(&p.status).unwrap_or(PaymentStatus::Pending),
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", security(("bearer" = [])), request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = String, Header, description = "Required. Same key and body: the original response again; same key, different body: 422")),
    responses(
        (status = 201, body = PaymentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant])?;
    let key = headers
        .get("idempotency-key")
        .ok_or(ApiError::IdempotencyKeyMissing)?
        .to_str()
        .map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))
        .and_then(|k| {
            validation::parse_idempotency_key(k).map_err(|e| ApiError::Invalid(vec![e]))
        })?;
    let (req, _) = read_json::<CreatePaymentRequest>(&state, &headers, body).await?;

    let mut errors = Vec::new();
    let currency = validation::parse_currency(&req.currency)
        .map_err(|e| errors.push(e))
        .ok();
    let amount = currency.and_then(|c| {
        validation::parse_amount(&req.amount, c)
            .map_err(|e| errors.push(e))
            .ok()
    });
    let description = validation::normalize_text(
        "description",
        req.description.as_deref().unwrap_or(""),
        0,
        validation::DESCRIPTION_MAX_CHARS,
    )
    .map_err(|e| errors.push(e))
    .ok();
    let account = validation::parse_payer_account(&req.payer_account)
        .map_err(|e| errors.push(e))
        .ok();
    let (Some(currency), Some(amount), Some(description), Some(account), true) =
        (currency, amount, description, account, errors.is_empty())
    else {
        return Err(ApiError::Invalid(errors));
    };

    // The fingerprint covers the request as sent (keyed, because it contains the account number).
    let request_hash = state
        .config()
        .data_keys
        .fingerprint(&serde_json::to_vec(&req).expect("request serializes"));
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let (key_id, sealed) = state
        .config()
        .data_keys
        .seal(account.as_bytes(), id.as_bytes());
    let row = PaymentRow {
        id: id.clone(),
        tenant_id: p.tenant_id.clone(),
        amount_minor: amount,
        currency: currency.code.code().to_string(),
        description,
        payer_masked: validation::mask_account(&account),
        payer_ciphertext: sealed,
        payer_key_id: key_id,
        status: PaymentStatus::Pending.as_str().to_string(),
        created_by: p.user_id.clone(),
        created_at: now,
        updated_at: now,
    };
    let view = payment_view(&row);
    let stored = StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        body: serde_json::to_string(&view).expect("view serializes"),
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        "payment.created",
        "payment",
        &id,
        serde_json::json!({
            "amount": view.amount,
            "currency": view.currency,
            "payer_account": view.payer_account,
        }),
    );
    let outcome = state
        .store()
        .create_payment(&p.tenant_id, &key, &request_hash, &row, &stored, &ev)
        .await?;
    let (response, replayed) = match outcome {
        IdempotentOutcome::Created(r) => {
            state.0.metrics.payments_created_total.inc();
            (r, false)
        }
        IdempotentOutcome::Replayed(r) => (r, true),
        IdempotentOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let status = StatusCode::from_u16(response.status)
        .map_err(|_| ApiError::Internal(StoreError::Corrupt("status".into())))?;
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        response.body,
    )
        .into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// Payment ids are UUIDs; anything else cannot exist.
fn parse_payment_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = PaymentView), (status = 404, description = "No such payment in your tenant", body = Problem, content_type = "application/problem+json")))]
async fn get_payment(
    State(state): State<AppState>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant, Role::Auditor])?;
    let id = parse_payment_id(&id)?;
    // Scoped by the caller's tenant: another tenant's payment is indistinguishable from none (404, not 403).
    let payment = state
        .store()
        .payment(&p.tenant_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListPaymentsQuery {
    /// Only payments with this status.
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100, default 50.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentPage {
    pub items: Vec<PaymentView>,
    pub next_cursor: Option<String>,
}

fn parse_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err(invalid("limit", "must be between 1 and 100")),
    }
}

fn decode_cursor(raw: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments", security(("bearer" = [])), params(ListPaymentsQuery),
    responses((status = 200, body = PaymentPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn list_payments(
    State(state): State<AppState>,
    Authed(p): Authed,
    query: Result<Query<ListPaymentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant, Role::Auditor])?;
    let q = parse_query(query)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            PaymentStatus::parse(s)
                .ok_or_else(|| {
                    invalid(
                        "status",
                        "must be one of pending, succeeded, failed, cancelled, refunded",
                    )
                })?
                .as_str()
                .to_string(),
        ),
    };
    let limit = parse_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let bad = || invalid("cursor", "is not a cursor returned by this endpoint");
            let text = decode_cursor(c).ok_or_else(bad)?;
            let (at, id) = text.split_once(':').ok_or_else(bad)?;
            Some((at.parse::<i64>().map_err(|_| bad())?, id.to_string()))
        }
    };
    let rows = state
        .store()
        .list_payments(
            &p.tenant_id,
            &PaymentFilter {
                status,
                after,
                limit,
            },
        )
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| URL_SAFE_NO_PAD.encode(format!("{}:{}", r.created_at, r.id)))
        })
        .flatten();
    Ok(json_response(
        StatusCode::OK,
        &PaymentPage {
            items: rows.iter().map(payment_view).collect(),
            next_cursor,
        },
    ))
}

fn transition_result(
    outcome: TransitionOutcome,
    to: PaymentStatus,
) -> Result<PaymentRow, ApiError> {
    match outcome {
        TransitionOutcome::Moved(p) => Ok(*p),
        TransitionOutcome::NotFound => Err(ApiError::NotFound),
        TransitionOutcome::Illegal { from } => Err(ApiError::IllegalTransition {
            from,
            to: to.as_str().to_string(),
        }),
        TransitionOutcome::Replayed => Err(ApiError::WebhookReplayed),
    }
}

#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = PaymentView), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Only pending payments can be cancelled", body = Problem, content_type = "application/problem+json")))]
async fn cancel_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant])?;
    let id = parse_payment_id(&id)?;
    let to = PaymentStatus::Cancelled;
    let t = Transition {
        payment_id: id.clone(),
        tenant_id: Some(p.tenant_id.clone()),
        from: to.sources(),
        to: to.as_str(),
        webhook_event_id: None,
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        "payment.cancelled",
        "payment",
        &id,
        serde_json::json!({}),
    );
    let payment = transition_result(state.store().transition(&t, &ev).await?, to)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}

// ---------------------------------------------------------------------------------------------
// PSP webhooks

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum PspEventType {
    #[serde(rename = "payment.succeeded")]
    Succeeded,
    #[serde(rename = "payment.failed")]
    Failed,
    #[serde(rename = "payment.refunded")]
    Refunded,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PspEvent {
    /// Unique delivery id; a second delivery with the same id is refused.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: PspEventType,
    pub payment_id: String,
}

#[utoipa::path(post, path = "/v1/webhooks/psp", tag = "webhooks", request_body = PspEvent,
    params(("Ward-Webhook-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")),
    responses((status = 200, body = PaymentView),
        (status = 401, description = "Bad signature or stale timestamp", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Replayed delivery or illegal transition", body = Problem, content_type = "application/problem+json")))]
async fn psp_webhook(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Authenticate the raw bytes before parsing anything.
    let bytes = read_body(&state, &headers, body).await?;
    let signature = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let cfg = state.config();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    webhook::verify(
        cfg.webhook_secret.expose(),
        signature,
        &bytes,
        now,
        cfg.webhook_tolerance,
    )
    .map_err(|e| match e {
        webhook::WebhookError::Stale => ApiError::WebhookStale,
        webhook::WebhookError::Malformed | webhook::WebhookError::BadSignature => {
            ApiError::WebhookSignatureInvalid
        }
    })?;
    let event: PspEvent = parse_json(&bytes)?;
    if event.id.is_empty()
        || event.id.len() > 128
        || !event.id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid("id", "must be 1 to 128 visible ASCII characters"));
    }
    let payment_id = parse_payment_id(&event.payment_id)?;
    let to = match event.kind {
        PspEventType::Succeeded => PaymentStatus::Succeeded,
        PspEventType::Failed => PaymentStatus::Failed,
        PspEventType::Refunded => PaymentStatus::Refunded,
    };
    let t = Transition {
        payment_id: payment_id.clone(),
        tenant_id: None,
        from: to.sources(),
        to: to.as_str(),
        webhook_event_id: Some(event.id.clone()),
    };
    // Tenant is filled in by the store from the payment row.
    let ev = AuditEvent::new(
        &ctx.audit("psp"),
        SYSTEM_TENANT,
        "payment.webhook_applied",
        "payment",
        &payment_id,
        serde_json::json!({ "event_id": event.id }),
    );
    let payment = transition_result(state.store().transition(&t, &ev).await?, to)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}

// ---------------------------------------------------------------------------------------------
// Audit

#[derive(Debug, Deserialize, utoipa::IntoParams)]
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
    responses((status = 200, description = "Newest first", body = AuditPage), (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn list_audit(
    State(state): State<AppState>,
    Authed(p): Authed,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
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
        Some(c) => match decode_cursor(c).and_then(|t| t.parse::<i64>().ok()) {
            Some(pos) => Some(pos),
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor returned by this endpoint",
                ));
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
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| URL_SAFE_NO_PAD.encode(r.pos.to_string()))
        })
        .flatten();
    Ok(json_response(
        StatusCode::OK,
        &AuditPage {
            items: rows.iter().map(audit_view).collect(),
            next_cursor,
        },
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvent {
    /// What the proxy saw, e.g. `rate_limited`, `token_rejected` (a-z, 0-9, `_`, `.`).
    pub kind: String,
    /// Tenant the event concerns, if known (recorded in details; the record goes to the system chain).
    pub tenant_id: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    /// Extra facts; must not contain secrets. At most 4 KiB.
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

#[utoipa::path(post, path = "/internal/v1/security-events", tag = "audit", request_body = SecurityEvent, security(("internal" = [])),
    responses((status = 202, description = "Recorded in the system audit chain"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No internal token is configured")))]
async fn security_event(
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
    let (event, _) = read_json::<SecurityEvent>(&state, &headers, body).await?;
    let mut errors = Vec::new();
    if event.kind.is_empty()
        || event.kind.len() > 64
        || !event
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        errors.push(FieldError::new(
            "kind",
            "must be 1 to 64 of a-z, 0-9, '_' and '.'",
        ));
    }
    if let Err(e) = short_filter("tenant_id", &event.tenant_id) {
        errors.push(e);
    }
    if let Some(ip) = &event.client_ip {
        if ip.parse::<IpAddr>().is_err() {
            errors.push(FieldError::new("client_ip", "must be an IP address"));
        }
    }
    if let Err(e) = short_filter("request_id", &event.request_id) {
        errors.push(e);
    }
    let details = serde_json::json!({ "tenant_id": event.tenant_id, "details": event.details });
    if details.to_string().len() > 4096 {
        errors.push(FieldError::new("details", "must be at most 4 KiB"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let actx = AuditContext {
        actor: "proxy".into(),
        client_ip: event.client_ip.unwrap_or_else(|| ctx.client_ip.to_string()),
        request_id: event.request_id.unwrap_or(ctx.request_id),
    };
    let ev = AuditEvent::new(
        &actx,
        SYSTEM_TENANT,
        "proxy.security_event",
        "security_event",
        &event.kind,
        details,
    );
    state.store().append_audit(&ev).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "internal",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "ward payments", description = "Payments and audit upstream bundled with ward"),
    paths(
        healthz, readyz, metrics, openapi, jwks, login, refresh, logout, change_password, create_user,
        create_payment, get_payment, list_payments, cancel_payment, psp_webhook, list_audit, security_event
    ),
    components(schemas(Problem, FieldError, PaymentStatus, PspEventType, Role)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_allows_only_listed_transitions() {
        use PaymentStatus::*;
        let all = [Pending, Succeeded, Failed, Cancelled, Refunded];
        let mut allowed = Vec::new();
        for from in all {
            for to in all {
                if to.sources().contains(&from.as_str()) {
                    allowed.push((from, to));
                }
            }
        }
        assert_eq!(
            allowed,
            [
                (Pending, Succeeded),
                (Pending, Failed),
                (Pending, Cancelled),
                (Succeeded, Refunded)
            ]
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(
            client_ip(&[], local, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&[], remote, &h), remote.ip());
        assert_eq!(
            client_ip(&[remote.ip()], remote, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn openapi_document_is_3_1_and_lists_the_payment_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(doc["paths"]["/v1/payments"]["post"].is_object());
        assert!(doc["components"]["schemas"]["CreatePaymentRequest"].is_object());
    }
}
