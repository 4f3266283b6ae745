//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! served at `GET /openapi.json`.

use axum::http::StatusCode;
use axum::response::Response;
use utoipa::OpenApi;

use super::{audit, json_response, ops, payments, sessions, users, webhooks};
use crate::identity::Role;
use crate::payments::domain::payment::PaymentStatus;
use crate::payments::errors::{FieldError, Problem};

#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "This document")))]
pub(super) async fn openapi() -> Response {
    json_response(StatusCode::OK, &ApiDoc::openapi())
}

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "internal",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "ward payments", description = "Payments and audit upstream bundled with ward"),
    paths(
        ops::healthz, ops::readyz, ops::metrics, openapi, ops::jwks, sessions::login, sessions::refresh,
        sessions::logout, sessions::change_password, users::create_user, users::revoke_sessions, payments::create_payment,
        payments::get_payment, payments::list_payments, payments::cancel_payment, webhooks::psp_webhook,
        audit::list_audit, audit::security_event
    ),
    components(schemas(Problem, FieldError, PaymentStatus, webhooks::PspEventType, Role)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_3_1_and_lists_the_payment_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(doc["paths"]["/v1/payments"]["post"].is_object());
        assert!(doc["components"]["schemas"]["CreatePaymentRequest"].is_object());
    }
}
