#![forbid(unsafe_code)]
pub mod payments;
