//! Payment statuses and the state machine, in one place:
//! `pending → succeeded | failed | cancelled`, `succeeded → refunded`, nothing else.
//!
//! The store checks every move with [`check_transition`] inside the transaction that makes it,
//! against the status it has just read; handlers only say where a payment should go.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Status of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 5] = [
        PaymentStatus::Pending,
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Cancelled,
        PaymentStatus::Refunded,
    ];

    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The statuses a payment may move to `self` from.
    pub fn sources(self) -> &'static [PaymentStatus] {
        match self {
            PaymentStatus::Pending => &[],
            PaymentStatus::Succeeded => &[PaymentStatus::Pending],
            PaymentStatus::Failed => &[PaymentStatus::Pending],
            PaymentStatus::Cancelled => &[PaymentStatus::Pending],
            PaymentStatus::Refunded => &[PaymentStatus::Succeeded],
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move the state machine does not allow (answered with 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal status transition from {from} to {to}")]
pub struct IllegalTransition {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
}

/// May a payment in status `from` move to `to`?
pub fn check_transition(from: PaymentStatus, to: PaymentStatus) -> Result<(), IllegalTransition> {
    if to.sources().contains(&from) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_allows_only_listed_transitions() {
        use PaymentStatus::*;
        let mut allowed = Vec::new();
        for from in PaymentStatus::ALL {
            for to in PaymentStatus::ALL {
                if check_transition(from, to).is_ok() {
                    allowed.push((from, to));
                }
            }
        }
        assert_eq!(
            allowed,
            [
                (Pending, Succeeded),
                (Pending, Failed),
                (Pending, Cancelled),
                (Succeeded, Refunded)
            ]
        );
    }

    #[test]
    fn an_illegal_move_names_both_statuses() {
        use PaymentStatus::*;
        let e = check_transition(Cancelled, Succeeded).unwrap_err();
        assert_eq!(
            e,
            IllegalTransition {
                from: Cancelled,
                to: Succeeded
            }
        );
        assert_eq!(
            e.to_string(),
            "illegal status transition from cancelled to succeeded"
        );
        assert!(check_transition(Pending, Pending).is_err(), "no self-moves");
        assert!(
            check_transition(Refunded, Succeeded).is_err(),
            "no way back"
        );
    }

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::from(s.as_str())
            );
        }
        assert_eq!(
            PaymentStatus::ALL.map(PaymentStatus::as_str),
            ["pending", "succeeded", "failed", "cancelled", "refunded"]
        );
        assert_eq!(PaymentStatus::parse("Pending"), None);
        assert_eq!(PaymentStatus::parse("bogus"), None);
    }
}
