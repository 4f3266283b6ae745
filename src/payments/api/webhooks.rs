//! PSP webhooks: signed deliveries that move a payment along the state machine. The signature
//! is checked over the raw bytes before anything is parsed; the delivery id is recorded with the
//! move, so a replay never applies twice.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{parse_json, read_body};
use super::payments::{parse_payment_id, payment_view, transition_result, PaymentView};
use super::{json_response, AppState, RequestContext};
use crate::payments::audit::{AuditAction, AuditEvent, SYSTEM_TENANT};
use crate::payments::domain::payment::PaymentStatus;
use crate::payments::errors::{invalid, ApiError, Problem};
use crate::payments::store::Transition;
use crate::payments::webhook;

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
pub enum PspEventType {
    #[serde(rename = "payment.succeeded")]
    Succeeded,
    #[serde(rename = "payment.failed")]
    Failed,
    #[serde(rename = "payment.refunded")]
    Refunded,
}

impl PspEventType {
    /// The status the event asks the payment to move to.
    fn target(self) -> PaymentStatus {
        match self {
            PspEventType::Succeeded => PaymentStatus::Succeeded,
            PspEventType::Failed => PaymentStatus::Failed,
            PspEventType::Refunded => PaymentStatus::Refunded,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PspEvent {
    /// Unique delivery id; a second delivery with the same id is refused.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: PspEventType,
    pub payment_id: String,
}

#[utoipa::path(post, path = "/v1/webhooks/psp", tag = "webhooks", request_body = PspEvent,
    params(("Ward-Webhook-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")),
    responses((status = 200, body = PaymentView),
        (status = 401, description = "Bad signature or stale timestamp", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Replayed delivery or illegal transition", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn psp_webhook(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Authenticate the raw bytes before parsing anything.
    let bytes = read_body(&state, &headers, body).await?;
    let signature = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let cfg = state.config();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    webhook::verify(
        cfg.webhook_secret.expose(),
        signature,
        &bytes,
        now,
        cfg.webhook_tolerance,
    )
    .map_err(|e| match e {
        webhook::WebhookError::Stale => ApiError::WebhookStale,
        webhook::WebhookError::Malformed | webhook::WebhookError::BadSignature => {
            ApiError::WebhookSignatureInvalid
        }
    })?;
    let event: PspEvent = parse_json(&bytes)?;
    if event.id.is_empty()
        || event.id.len() > 128
        || !event.id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid("id", "must be 1 to 128 visible ASCII characters"));
    }
    let payment_id = parse_payment_id(&event.payment_id)?;
    let t = Transition {
        payment_id: payment_id.clone(),
        tenant_id: None,
        to: event.kind.target(),
        webhook_event_id: Some(event.id.clone()),
    };
    // Tenant is filled in by the store from the payment row.
    let ev = AuditEvent::new(
        &ctx.audit("psp"),
        SYSTEM_TENANT,
        AuditAction::PaymentWebhookApplied,
        &payment_id,
        serde_json::json!({ "event_id": event.id }),
    );
    let payment = transition_result(state.store().transition(&t, &ev).await?)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}
