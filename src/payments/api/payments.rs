//! Payments: create (idempotent), read, list and cancel, always within the caller's tenant.
//!
//! Handlers say where a payment should go; whether it may is the state machine's decision
//! (`domain::payment`), taken by the store inside the transaction that moves it.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{parse_query, read_json, require_role, Authed};
use super::page::{bad_cursor, next_cursor, parse_limit, parse_payment_cursor, payment_cursor};
use super::{json_response, now_ms, rfc3339, AppState, RequestContext};
use crate::identity::Role;
use crate::payments::audit::{AuditAction, AuditEvent};
use crate::payments::domain::payment::{IllegalTransition, PaymentStatus};
use crate::payments::errors::{invalid, ApiError, Problem};
use crate::payments::store::{
    IdempotentOutcome, PaymentFilter, PaymentRow, StoreError, StoredResponse, Transition,
    TransitionOutcome,
};
use crate::payments::validation;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    /// Decimal string in major units, e.g. "12.50"; at most the currency's minor-unit decimals;
    /// from one minor unit up to 10,000,000 major units.
    pub amount: String,
    /// ISO 4217 alphabetic code, e.g. "EUR".
    pub currency: String,
    /// Free text, NFC-normalized, at most 500 characters, no control characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Payer account reference (IBAN, account number, card token); encrypted at rest, shown masked.
    pub payer_account: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub amount: String,
    pub currency: String,
    pub description: String,
    /// Masked: only the last four characters.
    pub payer_account: String,
    pub status: PaymentStatus,
    pub created_at: String,
    pub updated_at: String,
}

pub(super) fn payment_view(p: &PaymentRow) -> PaymentView {
    let exponent = validation::parse_currency(&p.currency)
        .map(|c| c.exponent)
        .unwrap_or(2);
    PaymentView {
        id: p.id.clone(),
        amount: validation::format_minor(p.amount_minor, exponent),
        currency: p.currency.clone(),
        description: p.description.clone(),
        payer_account: p.payer_masked.clone(),
        status: p.status,
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments", security(("bearer" = [])), request_body = CreatePaymentRequest,
    params(("Idempotency-Key" = String, Header, description = "Required. Same key and body: the original response again; same key, different body: 422")),
    responses(
        (status = 201, body = PaymentView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant])?;
    let key = headers
        .get("idempotency-key")
        .ok_or(ApiError::IdempotencyKeyMissing)?
        .to_str()
        .map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))
        .and_then(|k| {
            validation::parse_idempotency_key(k).map_err(|e| ApiError::Invalid(vec![e]))
        })?;
    let (req, _) = read_json::<CreatePaymentRequest>(&state, &headers, body).await?;

    let mut errors = Vec::new();
    let currency = validation::parse_currency(&req.currency)
        .map_err(|e| errors.push(e))
        .ok();
    let amount = currency.and_then(|c| {
        validation::parse_amount(&req.amount, c)
            .map_err(|e| errors.push(e))
            .ok()
    });
    let description = validation::normalize_text(
        "description",
        req.description.as_deref().unwrap_or(""),
        0,
        validation::DESCRIPTION_MAX_CHARS,
    )
    .map_err(|e| errors.push(e))
    .ok();
    let account = validation::parse_payer_account(&req.payer_account)
        .map_err(|e| errors.push(e))
        .ok();
    let (Some(currency), Some(amount), Some(description), Some(account), true) =
        (currency, amount, description, account, errors.is_empty())
    else {
        return Err(ApiError::Invalid(errors));
    };

    // The fingerprint covers the request as sent (keyed, because it contains the account number).
    let request_hash = state
        .config()
        .data_keys
        .fingerprint(&serde_json::to_vec(&req).expect("request serializes"));
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let (key_id, sealed) = state
        .config()
        .data_keys
        .seal(account.as_bytes(), id.as_bytes());
    let row = PaymentRow {
        id: id.clone(),
        tenant_id: p.tenant_id.clone(),
        amount_minor: amount,
        currency: currency.code.code().to_string(),
        description,
        payer_masked: validation::mask_account(&account),
        payer_ciphertext: sealed,
        payer_key_id: key_id,
        status: PaymentStatus::Pending,
        created_by: p.user_id.clone(),
        created_at: now,
        updated_at: now,
    };
    let view = payment_view(&row);
    let stored = StoredResponse {
        status: StatusCode::CREATED.as_u16(),
        body: serde_json::to_string(&view).expect("view serializes"),
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::PaymentCreated,
        &id,
        serde_json::json!({
            "amount": view.amount,
            "currency": view.currency,
            "payer_account": view.payer_account,
        }),
    );
    let outcome = state
        .store()
        .create_payment(&p.tenant_id, &key, &request_hash, &row, &stored, &ev)
        .await?;
    let (response, replayed) = match outcome {
        IdempotentOutcome::Created(r) => {
            state.metrics().payments_created_total.inc();
            (r, false)
        }
        IdempotentOutcome::Replayed(r) => (r, true),
        IdempotentOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let status = StatusCode::from_u16(response.status).map_err(|_| {
        ApiError::Internal(StoreError::Corrupt {
            column: "idempotency_keys.status_code",
            value: response.status.to_string(),
        })
    })?;
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        response.body,
    )
        .into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(r)
}

/// Payment ids are UUIDs; anything else cannot exist.
pub(super) fn parse_payment_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = PaymentView), (status = 404, description = "No such payment in your tenant", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn get_payment(
    State(state): State<AppState>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant, Role::Auditor])?;
    let id = parse_payment_id(&id)?;
    // Scoped by the caller's tenant: another tenant's payment is indistinguishable from none (404, not 403).
    let payment = state
        .store()
        .payment(&p.tenant_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}

/// Query parameters (utoipa's default would document them as required path parameters).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListPaymentsQuery {
    /// Only payments with this status.
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentPage {
    pub items: Vec<PaymentView>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments", security(("bearer" = [])), params(ListPaymentsQuery),
    responses((status = 200, body = PaymentPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list_payments(
    State(state): State<AppState>,
    Authed(p): Authed,
    query: Result<Query<ListPaymentsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant, Role::Auditor])?;
    let q = parse_query(query)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(PaymentStatus::parse(s).ok_or_else(|| {
            invalid(
                "status",
                "must be one of pending, succeeded, failed, cancelled, refunded",
            )
        })?),
    };
    let limit = parse_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(parse_payment_cursor(c).ok_or_else(|| ApiError::Invalid(vec![bad_cursor()]))?)
        }
    };
    let rows = state
        .store()
        .list_payments(
            &p.tenant_id,
            &PaymentFilter {
                status,
                after,
                limit,
            },
        )
        .await?;
    let next_cursor = next_cursor(&rows, limit, |r| payment_cursor(r.created_at, &r.id));
    Ok(json_response(
        StatusCode::OK,
        &PaymentPage {
            items: rows.iter().map(payment_view).collect(),
            next_cursor,
        },
    ))
}

/// The answer to a status move: the moved payment, or why it did not move.
pub(super) fn transition_result(outcome: TransitionOutcome) -> Result<PaymentRow, ApiError> {
    match outcome {
        TransitionOutcome::Moved(p) => Ok(*p),
        TransitionOutcome::NotFound => Err(ApiError::NotFound),
        TransitionOutcome::Illegal(IllegalTransition { from, to }) => {
            Err(ApiError::IllegalTransition { from, to })
        }
        TransitionOutcome::Replayed => Err(ApiError::WebhookReplayed),
    }
}

#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses((status = 200, body = PaymentView), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Only pending payments can be cancelled", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn cancel_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin, Role::Merchant])?;
    let id = parse_payment_id(&id)?;
    let t = Transition {
        payment_id: id.clone(),
        tenant_id: Some(p.tenant_id.clone()),
        to: PaymentStatus::Cancelled,
        webhook_event_id: None,
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::PaymentCancelled,
        &id,
        serde_json::json!({}),
    );
    let payment = transition_result(state.store().transition(&t, &ev).await?)?;
    Ok(json_response(StatusCode::OK, &payment_view(&payment)))
}
