//! `Rejection`: every way the proxy answers a request by itself. It is the only type that turns
//! into a proxy-made response, through one exhaustive `match` (no `_` arm: a new variant forces
//! a decision on its status and problem type). Bodies are RFC 9457 `application/problem+json`
//! with a stable `type`, a short title and the request id; causes go to the logs only.

use std::time::Duration;

use http::StatusCode;

/// Why a framing check refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingFault {
    MissingHost,
    DuplicateHost,
    ConflictingLength,
    BadTransferEncoding,
    BadContentLength,
    BadChunk,
    BareLineFeed,
    ControlCharacter,
    ObsoleteLineFolding,
    MalformedHead,
}

impl FramingFault {
    pub fn as_str(self) -> &'static str {
        match self {
            FramingFault::MissingHost => "missing_host",
            FramingFault::DuplicateHost => "duplicate_host",
            FramingFault::ConflictingLength => "content_length_with_transfer_encoding",
            FramingFault::BadTransferEncoding => "bad_transfer_encoding",
            FramingFault::BadContentLength => "bad_content_length",
            FramingFault::BadChunk => "bad_chunk",
            FramingFault::BareLineFeed => "bare_line_feed",
            FramingFault::ControlCharacter => "control_character",
            FramingFault::ObsoleteLineFolding => "obsolete_line_folding",
            FramingFault::MalformedHead => "malformed_head",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Framing(FramingFault),
    BadBody,
    RequestTimeout,
    NoRoute,
    Denied(StatusCode),
    MethodNotAllowed,
    UriTooLong,
    TooManyHeaders,
    HeaderTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    BodyTooLarge,
    RateLimited {
        limit: std::sync::Arc<str>,
        retry_after: Duration,
    },
    CorsDenied,
    UpstreamUnavailable,
    UpstreamTimeout,
    ShuttingDown,
}

impl Rejection {
    /// Status, stable problem slug and title.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Rejection::Framing(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            Rejection::BadBody => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            Rejection::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request body not received in time",
            ),
            Rejection::NoRoute => (
                StatusCode::NOT_FOUND,
                "no-route",
                "No route for this request",
            ),
            Rejection::Denied(s) => (*s, "denied", "Request denied by policy"),
            Rejection::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed on this route",
            ),
            Rejection::UriTooLong => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI too long"),
            Rejection::TooManyHeaders => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-many-headers",
                "Too many request headers",
            ),
            Rejection::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header-too-large",
                "A request header is too large",
            ),
            Rejection::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "Request headers too large",
            ),
            Rejection::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Content type not accepted on this route",
            ),
            Rejection::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Rejection::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Rejection::CorsDenied => (
                StatusCode::FORBIDDEN,
                "cors-denied",
                "Cross-origin request not allowed",
            ),
            Rejection::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "Upstream unavailable",
            ),
            Rejection::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
            ),
            Rejection::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "Proxy is shutting down",
            ),
        }
    }

    /// The reason logged with the decision.
    pub fn reason(&self) -> String {
        match self {
            Rejection::Framing(f) => format!("framing:{}", f.as_str()),
            Rejection::RateLimited { limit, .. } => format!("rate_limited:{limit}"),
            other => other.parts().1.to_owned(),
        }
    }

    /// The problem+json body.
    pub fn body(&self, request_id: &str) -> String {
        let (status, slug, title) = self.parts();
        serde_json::json!({
            "type": format!("urn:ward:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "request_id": request_id,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_carry_type_status_and_request_id_only() {
        let b: serde_json::Value =
            serde_json::from_str(&Rejection::BodyTooLarge.body("r1")).unwrap();
        assert_eq!(b["type"], "urn:ward:problem:body-too-large");
        assert_eq!(b["status"], 413);
        assert_eq!(b["request_id"], "r1");
        assert_eq!(b.as_object().unwrap().len(), 4);
    }

    #[test]
    fn every_rejection_has_an_error_status() {
        let all = [
            Rejection::Framing(FramingFault::BareLineFeed),
            Rejection::BadBody,
            Rejection::RequestTimeout,
            Rejection::NoRoute,
            Rejection::Denied(StatusCode::FORBIDDEN),
            Rejection::MethodNotAllowed,
            Rejection::UriTooLong,
            Rejection::TooManyHeaders,
            Rejection::HeaderTooLarge,
            Rejection::HeadersTooLarge,
            Rejection::UnsupportedMediaType,
            Rejection::BodyTooLarge,
            Rejection::RateLimited {
                limit: "x".into(),
                retry_after: Duration::from_secs(1),
            },
            Rejection::CorsDenied,
            Rejection::UpstreamUnavailable,
            Rejection::UpstreamTimeout,
            Rejection::ShuttingDown,
        ];
        for r in all {
            let s = r.parts().0;
            assert!(s.is_client_error() || s.is_server_error(), "{r:?}");
        }
    }
}
