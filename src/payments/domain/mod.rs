//! The payments service's rules, free of HTTP and SQL: pure functions over typed values.
//!
//! - [`payment`]: payment statuses and the state machine that moves them.
//! - [`lockout`]: failed-login counting and when an account locks.
//!
//! Handlers parse input into these types and the store applies their decisions inside its
//! transactions; neither re-states a rule. Nothing here does I/O or reads the clock.

pub mod lockout;
pub mod payment;
