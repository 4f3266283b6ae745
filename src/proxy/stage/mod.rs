//! The pipeline's stages, each a plain function that checks one concern and returns evidence or
//! a `Rejection`. The order lives in `pipeline::run_stages`, not here.

pub mod authn;
pub mod authz;
pub mod cors;
pub mod framing;
pub mod headers;
pub mod limits;
pub mod rate_limit;
pub mod route;
pub mod session;
