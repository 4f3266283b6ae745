//! Stage 2, route selection (404) and deny routes (their configured 4xx, or shadow).

use std::sync::Arc;

use http::Request;

use crate::policy::{Mode, Policy, Route};
use crate::proxy::rejection::Rejection;

pub fn select<B>(policy: &Policy, req: &Request<B>) -> Result<Arc<Route>, Rejection> {
    let host = super::framing::host(req);
    policy
        .route_for(req.method(), host, req.uri().path())
        .cloned()
        .ok_or(Rejection::NoRoute)
}

/// A deny route refuses here; in shadow mode the caller records it and forwards.
pub fn check_deny(route: &Route) -> Option<(Mode, Rejection)> {
    route.deny.map(|d| (d.mode, Rejection::Denied(d.status)))
}
