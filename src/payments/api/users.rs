//! Users: an admin adds users to their own tenant.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{read_json, require_role, Authed};
use super::{json_response, AppState, RequestContext};
use crate::identity::Role;
use crate::payments::audit::{AuditAction, AuditEvent};
use crate::payments::errors::{ApiError, Problem};
use crate::payments::store::{NewUser, StoreError};
use crate::payments::validation;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    pub role: Role,
    /// Initial password, at least 12 characters.
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub role: Role,
}

#[utoipa::path(post, path = "/v1/users", tag = "auth", security(("bearer" = [])), request_body = CreateUserRequest, responses(
    (status = 201, body = UserView),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 409, body = Problem, content_type = "application/problem+json"),
    (status = 422, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin])?;
    let (req, _) = read_json::<CreateUserRequest>(&state, &headers, body).await?;
    let mut errors = Vec::new();
    let email = validation::parse_email(&req.email)
        .map_err(|e| errors.push(e))
        .ok();
    if let Err(e) = validation::check_new_password("password", &req.password) {
        errors.push(e);
    }
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(ApiError::Invalid(errors));
    };
    let user = NewUser {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: p.tenant_id.clone(),
        email: email.clone(),
        role: req.role,
        password_hash: state.hash_password(req.password).await,
    };
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::UserCreated,
        &user.id,
        serde_json::json!({ "email": validation::mask_email(&email), "role": req.role.as_str() }),
    );
    match state.store().create_user(&user, &ev).await {
        Err(StoreError::Duplicate(what)) => return Err(ApiError::AlreadyExists(what.to_string())),
        other => other?,
    }
    Ok(json_response(
        StatusCode::CREATED,
        &UserView {
            id: user.id,
            email,
            role: req.role,
        },
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionsRevoked {
    /// Sessions that were active and are now revoked.
    pub revoked: u64,
}

#[utoipa::path(post, path = "/v1/users/{id}/sessions/revoke", tag = "auth", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
    (status = 200, description = "Every session of the user is revoked, and every access token issued so far refused", body = SessionsRevoked),
    (status = 403, body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(super) async fn revoke_sessions(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin])?;
    if id.is_empty() || id.len() > 64 {
        return Err(ApiError::NotFound);
    }
    let user = state
        .store()
        .user_by_id(&p.tenant_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let ev = AuditEvent::new(
        &ctx.audit(format!("user:{}", p.user_id)),
        &p.tenant_id,
        AuditAction::SessionsRevoked,
        &user.id,
        serde_json::json!({ "effect": "all sessions revoked" }),
    );
    let revoked = state
        .store()
        .revoke_user_sessions(&p.tenant_id, &user.id, &ev)
        .await?;
    let before = crate::state::now_secs() + 1;
    super::sessions::publish_revocation(
        &state,
        crate::state::revocation::Kind::Subject,
        &user.id,
        Some(before),
    )
    .await;
    Ok(json_response(StatusCode::OK, &SessionsRevoked { revoked }))
}
