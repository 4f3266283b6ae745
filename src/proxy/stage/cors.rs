//! Stage 5, CORS at the proxy. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) on a route with a CORS policy is answered here: 204 with the
//! allowed origin, methods and headers, or 403 with no CORS headers at all when anything asked
//! for is not allowed. Actual cross-origin requests are forwarded; `decorate` adds the CORS
//! response headers only for an allowed origin, and `Vary: Origin` always.

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::policy::{Cors, Route};
use crate::proxy::rejection::Rejection;

pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a preflight for a route with a CORS policy; `Ok(None)` when the request is not one.
pub fn preflight<B>(route: &Route, req: &Request<B>) -> Result<Option<Response<()>>, Rejection> {
    let Some(cors) = &route.cors else {
        return Ok(None);
    };
    if !is_preflight(req) {
        return Ok(None);
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !origin_allowed(cors, origin) {
        return Err(Rejection::CorsDenied);
    }
    let method = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .ok_or(Rejection::CorsDenied)?;
    if !cors.allow_methods.contains(&method) {
        return Err(Rejection::CorsDenied);
    }
    for asked in req
        .headers()
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        let asked = asked.to_str().map_err(|_| Rejection::CorsDenied)?;
        for name in asked.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !cors
                .allow_headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                return Err(Rejection::CorsDenied);
            }
        }
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_str(origin).map_err(|_| Rejection::CorsDenied)?,
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        cors.allow_methods_value.clone(),
    );
    if let Some(v) = &cors.allow_headers_value {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age_value.clone());
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    Ok(Some(resp))
}

fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    !origin.is_empty() && origin != "null" && cors.origins.iter().any(|p| p.matches(origin))
}

/// CORS headers on an actual (non-preflight) response.
pub fn decorate(route: &Route, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(cors) = &route.cors else { return };
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    if !origin.to_str().is_ok_and(|o| origin_allowed(cors, o)) {
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &cors.expose_headers_value {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}
