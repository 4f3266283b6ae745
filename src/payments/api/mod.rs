//! The HTTP surface of `ward payments`: the router, the per-request shell, and one file per
//! resource.
//!
//! [`handle`] is the per-request shell: request id, client IP, logging and metrics around the
//! router. Each handler then reads top to bottom: authenticate (the [`Authed`] extractor verifies
//! the access token and its session), authorize (role and tenant), parse and validate the input
//! once, call the store (which writes the audit record in the same transaction), answer.
//! Every error is an [`ApiError`](super::errors::ApiError), rendered as `application/problem+json`.
//! Rules that are not about HTTP (the payment state machine, lockout) live in
//! [`domain`](super::domain), not here.
//!
//! - `sessions`: login, refresh, logout, password change (`/v1/auth/*`).
//! - `users`: adding users to a tenant.
//! - `payments`: creating, reading, listing and cancelling payments.
//! - `webhooks`: PSP deliveries that move payments along the state machine.
//! - `audit`: reading the trail, and the proxy's security events.
//! - `ops`: health, readiness, metrics, JWKS.
//! - `openapi`: the OpenAPI document generated from the handlers.
//! - `extract`: authentication ([`Authed`]), roles, strict JSON bodies and queries.
//! - `page`: limits and cursors shared by the list endpoints.

mod audit;
mod extract;
mod openapi;
mod ops;
mod page;
mod payments;
mod sessions;
mod users;
mod webhooks;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::Instrument;

pub use self::extract::Authed;
pub use self::openapi::ApiDoc;
use super::audit::AuditContext;
use super::auth;
use super::errors::{ApiError, REQUEST_ID};
use super::metrics::Metrics;
use super::store::Store;
use super::Config;

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

    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    fn dummy_hash(&self) -> &str {
        &self.0.dummy_hash
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
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/v1/auth/login", post(sessions::login))
        .route("/v1/auth/refresh", post(sessions::refresh))
        .route("/v1/auth/logout", post(sessions::logout))
        .route("/v1/auth/password", post(sessions::change_password))
        .route("/v1/users", post(users::create_user))
        .route(
            "/v1/users/{id}/sessions/revoke",
            post(users::revoke_sessions),
        )
        .route(
            "/v1/payments",
            post(payments::create_payment).get(payments::list_payments),
        )
        .route("/v1/payments/{id}", get(payments::get_payment))
        .route("/v1/payments/{id}/cancel", post(payments::cancel_payment))
        .route("/v1/webhooks/psp", post(webhooks::psp_webhook))
        .route("/v1/audit", get(audit::list_audit))
        .route("/internal/v1/security-events", post(audit::security_event))
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

tokio::task_local! {
    /// The verified caller of the request being served (tenant, user), for its log line; set by
    /// the `Authed` extractor.
    static CALLER: Arc<std::sync::Mutex<Option<(String, String)>>>;
}

/// Records the verified caller for the request's log line (outside a request: nothing).
pub(super) fn note_caller(tenant: &str, user: &str) {
    let _ = CALLER.try_with(|c| {
        *c.lock().expect("caller cell lock") = Some((tenant.to_owned(), user.to_owned()));
    });
}

/// The request shell: establish request id and client IP (the shared rules of
/// `crate::request_id` and `crate::client_ip`), run the router inside the request's span, then
/// log the product's one request line and record metrics.
pub async fn handle(
    router: Router,
    state: AppState,
    peer: SocketAddr,
    mut req: Request<hyper::body::Incoming>,
) -> Response {
    let started = Instant::now();
    let request_id = crate::request_id::accept_or_new(req.headers());
    let request_id = request_id.to_str().unwrap_or("-").to_owned();
    let trusted = &state.config().trusted_proxies;
    let client_ip = crate::client_ip::client_ip(peer.ip(), req.headers(), |ip| {
        ip.is_loopback() || trusted.contains(&ip)
    });
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        client_ip,
    });
    let caller = Arc::new(std::sync::Mutex::new(None));
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = CALLER
        .scope(
            caller.clone(),
            REQUEST_ID.scope(request_id.clone(), router.oneshot(req)),
        )
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
    let m = state.metrics();
    m.requests_total
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    m.request_duration_seconds
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(crate::request_id::HEADER, v);
    }
    // Tokens, payments and audit records must not be cached; a handler may say otherwise (JWKS).
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    let who = caller.lock().expect("caller cell lock").clone();
    crate::access_log::AccessLine {
        service: "payments",
        request_id: &request_id,
        method: method.as_str(),
        path: &path,
        route: &route,
        status: status.as_u16(),
        duration: elapsed,
        client_ip,
        tenant: who.as_ref().map(|(t, _)| t.as_str()),
        subject: who.as_ref().map(|(_, u)| u.as_str()),
        proxy: None,
    }
    .emit();
    response
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
