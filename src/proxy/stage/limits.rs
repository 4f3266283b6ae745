//! Stage 3, request limits, answered without reading the body: method (405), URL (414), header
//! count and sizes (431), content type (415), declared body size (413). Bodies without a
//! Content-Length are bounded while read, in `proxy::upstream`.

use http::{header, Request};

use crate::policy::RequestLimits;
use crate::proxy::rejection::Rejection;

/// `cors_preflight`: an OPTIONS preflight on a route with a CORS policy, which the CORS stage
/// answers whatever the route's methods are.
pub fn check<B: http_body::Body>(
    limits: &RequestLimits,
    req: &Request<B>,
    cors_preflight: bool,
) -> Result<(), Rejection> {
    if !cors_preflight && !limits.methods.contains(req.method()) {
        return Err(Rejection::MethodNotAllowed);
    }
    let url_len = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if url_len > limits.max_url {
        return Err(Rejection::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(Rejection::TooManyHeaders);
    }
    let mut total = 0usize;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len();
        if size > limits.max_header_bytes {
            return Err(Rejection::HeaderTooLarge);
        }
        total += size;
    }
    if total > limits.max_total_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Rejection::BadBody)?,
        ),
        None => None,
    };
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(Rejection::BodyTooLarge);
    }
    let has_body =
        declared.is_some_and(|n| n > 0) || (declared.is_none() && !req.body().is_end_stream());
    if has_body && !limits.content_types.is_empty() {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match media {
            Some(m) if limits.content_types.contains(&m) => {}
            _ => return Err(Rejection::UnsupportedMediaType),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use http::Method;
    use http_body_util::{Empty, Full};

    use super::*;
    use crate::policy::compile::compile_sources;

    fn route() -> std::sync::Arc<crate::policy::Route> {
        let yaml = "version: 1\nupstream: {url: http://127.0.0.1:9}\nroutes:\n  - name: api\n    limits:\n      max_body: 1KiB\n      max_url: 64\n      max_headers: 4\n      max_header_bytes: 64\n      max_total_header_bytes: 128\n      methods: [GET, POST]\n      content_types: [application/json]\n";
        let p = compile_sources(&[(PathBuf::from("p.yaml"), yaml.to_owned())]).unwrap();
        p.routes[0].clone()
    }

    fn get(uri: &str) -> http::request::Builder {
        Request::get(uri)
    }

    fn run(req: http::request::Builder) -> Result<(), Rejection> {
        check(
            &route().limits,
            &req.body(Empty::<Bytes>::new()).unwrap(),
            false,
        )
    }

    fn post(ct: Option<&str>, body: &'static str) -> Result<(), Rejection> {
        let mut b = Request::post("/");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let req = b
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        check(&route().limits, &req, false)
    }

    #[test]
    fn a_request_inside_every_limit_passes() {
        assert!(run(get("/v1/payments?page=2")).is_ok());
        assert!(post(Some("application/json; charset=utf-8"), "{}").is_ok());
        assert!(post(Some("Application/JSON"), "{}").is_ok());
    }

    #[test]
    fn each_limit_answers_with_its_own_rejection() {
        assert!(matches!(
            run(Request::builder().method(Method::DELETE).uri("/")),
            Err(Rejection::MethodNotAllowed)
        ));
        assert!(matches!(
            run(get(&format!("/{}", "a".repeat(64)))),
            Err(Rejection::UriTooLong)
        ));
        let mut many = get("/");
        for i in 0..5 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert!(matches!(run(many), Err(Rejection::TooManyHeaders)));
        assert!(matches!(
            run(get("/").header("x-big", "v".repeat(60))),
            Err(Rejection::HeaderTooLarge)
        ));
        let total = get("/")
            .header("x-a", "v".repeat(50))
            .header("x-b", "v".repeat(50))
            .header("x-c", "v".repeat(50));
        assert!(matches!(run(total), Err(Rejection::HeadersTooLarge)));
        assert!(matches!(
            run(get("/").header(header::CONTENT_LENGTH, "1025")),
            Err(Rejection::BodyTooLarge)
        ));
        assert!(matches!(
            run(get("/").header(header::CONTENT_LENGTH, "12a")),
            Err(Rejection::BadBody)
        ));
        assert!(matches!(
            post(Some("text/plain"), "x"),
            Err(Rejection::UnsupportedMediaType)
        ));
        assert!(matches!(
            post(None, "x"),
            Err(Rejection::UnsupportedMediaType)
        ));
    }

    #[test]
    fn a_cors_preflight_passes_the_method_check_and_an_empty_body_needs_no_content_type() {
        let options = Request::options("/").body(Empty::<Bytes>::new()).unwrap();
        assert!(matches!(
            check(&route().limits, &options, false),
            Err(Rejection::MethodNotAllowed)
        ));
        assert!(check(&route().limits, &options, true).is_ok());
        assert!(run(get("/").header(header::CONTENT_LENGTH, "0")).is_ok());
    }
}
