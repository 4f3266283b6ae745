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
