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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::policy::compile::compile_sources;

    fn route(cors: &str) -> Arc<Route> {
        let yaml = format!(
            "version: 1\nupstream: {{url: http://127.0.0.1:9}}\nroutes:\n  - name: api\n{cors}"
        );
        let p = compile_sources(&[(PathBuf::from("p.yaml"), yaml)]).unwrap();
        p.routes[0].clone()
    }

    fn with_cors() -> Arc<Route> {
        route(
            "    cors:\n      allow_origins: [\"https://app.example.com\", \"https://*.pay.example.com\"]\n      allow_methods: [GET, POST]\n      allow_headers: [Authorization, Content-Type]\n      expose_headers: [X-Request-Id]\n      allow_credentials: true\n      max_age: 10m\n",
        )
    }

    fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
        let mut b = Request::options("/v1/payments")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method);
        if let Some(h) = headers {
            b = b.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_options_with_origin_and_requested_method_is_a_preflight() {
        assert!(is_preflight(&preflight_req("https://a", "GET", None)));
        let plain_options = Request::options("/").header(header::ORIGIN, "https://a");
        assert!(!is_preflight(&plain_options.body(()).unwrap()));
        let get = Request::get("/")
            .header(header::ORIGIN, "https://a")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET");
        assert!(!is_preflight(&get.body(()).unwrap()));
    }

    #[test]
    fn an_allowed_preflight_gets_204_with_every_cors_header() {
        let r = with_cors();
        let req = preflight_req(
            "https://shop.pay.example.com",
            "POST",
            Some("content-type, AUTHORIZATION"),
        );
        let resp = preflight(&r, &req).unwrap().expect("answered here");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let h = resp.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.pay.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[header::VARY].to_str().unwrap().starts_with("Origin"));
    }

    #[test]
    fn a_preflight_asking_for_anything_not_allowed_is_refused() {
        let r = with_cors();
        let refused = [
            preflight_req("https://evil.example.com", "GET", None),
            preflight_req("null", "GET", None),
            preflight_req("https://a.b.pay.example.com", "GET", None),
            preflight_req("https://app.example.com", "DELETE", None),
            preflight_req("https://app.example.com", "GET", Some("x-admin")),
            preflight_req(
                "https://app.example.com",
                "GET",
                Some("authorization, x-admin"),
            ),
        ];
        for req in &refused {
            assert!(
                matches!(preflight(&r, req), Err(Rejection::CorsDenied)),
                "{:?}",
                req.headers()
            );
        }
    }

    #[test]
    fn routes_without_cors_and_non_preflights_are_not_answered_here() {
        let plain = route("");
        let req = preflight_req("https://app.example.com", "GET", None);
        assert!(matches!(preflight(&plain, &req), Ok(None)));
        let r = with_cors();
        let get = Request::get("/")
            .header(header::ORIGIN, "https://app.example.com")
            .body(())
            .unwrap();
        assert!(matches!(preflight(&r, &get), Ok(None)));
    }

    #[test]
    fn actual_responses_carry_cors_headers_only_for_an_allowed_origin() {
        let r = with_cors();
        let mut h = HeaderMap::new();
        decorate(
            &r,
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert_eq!(h[header::VARY], "Origin");

        let mut h = HeaderMap::new();
        decorate(
            &r,
            Some(&HeaderValue::from_static("https://evil.example.com")),
            &mut h,
        );
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(
            h[header::VARY],
            "Origin",
            "Vary: Origin whatever the origin"
        );

        let mut h = HeaderMap::new();
        decorate(
            &route(""),
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert!(h.is_empty(), "no CORS policy, no CORS headers");
    }
}
