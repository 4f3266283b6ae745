//! The admin listener (loopback by default, never the public port): `/metrics` (Prometheus text),
//! `/healthz` (the process answers), `/readyz` (a policy is loaded, every JWKS source has loaded
//! once, the upstream accepts TCP connections, and the proxy is not draining), `/policy` (active
//! hash, load time, sources, issuers and their keys, the rate-limit store, last reload error).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Shared;
use crate::telemetry::rfc3339;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if super::control::handles(req.uri().path()) {
        let (parts, body) = req.into_parts();
        let a = super::control::handle(
            &shared,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            body,
        )
        .await;
        return Ok(reply(a.status, "application/json", a.body));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ok, why) = ready(&shared).await;
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", format!("{why}\n"))
        }
        "/policy" => reply(StatusCode::OK, "application/json", policy_json(&shared)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

async fn ready(shared: &Shared) -> (bool, String) {
    if shared.draining.load(Ordering::SeqCst) {
        return (false, "draining".into());
    }
    // Keys that never loaded: routes needing them answer 503. Once loaded, a failing refresh
    // keeps the last good keys and only shows in metrics and /policy.
    let unready = shared.keys.unready();
    if !unready.is_empty() {
        let list: Vec<String> = unready
            .into_iter()
            .map(|(issuer, why)| format!("{issuer}: {why}"))
            .collect();
        return (false, format!("keys not loaded: {}", list.join("; ")));
    }
    let policy = shared.policy.snapshot();
    if policy
        .sessions
        .revocation
        .is_some_and(|r| r.on_unsynced == crate::policy::spec::Unsynced::FailClosed)
        && !shared.revocations.is_synced()
    {
        return (false, "revocations not loaded yet (fail_closed)".into());
    }
    // The default upstream (the sidecar's service), else the first named one: one backend of
    // several being down must not take the whole edge proxy out of rotation.
    let Some(upstream) = policy
        .upstreams
        .get(crate::policy::upstream::DEFAULT_NAME)
        .or_else(|| policy.upstreams.values().next())
    else {
        return (false, "no upstream".into());
    };
    let authority = &upstream.authority;
    let port = authority.port_u16().unwrap_or(80);
    let addr = format!("{}:{port}", authority.host());
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (true, "ready".into()),
        _ => (false, "upstream unreachable".into()),
    }
}

fn policy_json(shared: &Shared) -> String {
    let p = shared.policy.snapshot();
    let err = shared.policy.last_error();
    serde_json::json!({
        "hash": p.hash,
        "loaded_at": rfc3339(p.loaded_at),
        "sources": p.sources.iter().map(|s| s.display().to_string()).collect::<Vec<_>>(),
        "routes": p.routes.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
        "issuers": shared.keys.describe(),
        "revocations": {
            "backend": shared.revocations.backend_name(),
            "synced": shared.revocations.is_synced(),
        },
        "rate_limit_store": match &shared.limiter {
            crate::limit::Limiter::Memory(_) => "memory".to_owned(),
            crate::limit::Limiter::Redis(r) => format!("redis {}", r.link().target()),
        },
        "last_reload_error": err.map(|e| serde_json::json!({"at": rfc3339(e.at), "message": e.message})),
    })
    .to_string()
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
