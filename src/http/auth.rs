//! Who is calling: the `Caller` extractor.
//!
//! In the lab mode (`auth = "none"`) nobody proves anything: like Glance deployed without
//! Keystone, a request acts as an admin of the default project unless the `X-Project-Id` (or
//! `X-Tenant-Id`), `X-User-Id` and `X-Roles` headers say otherwise. API keys come later.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{AppState, Error};
use crate::config::AuthMode;
use crate::policy::Caller;

/// Roles of a lab-mode caller that names none.
const LAB_ROLES: [&str; 3] = ["admin", "member", "reader"];

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Error> {
        match state.config.auth {
            AuthMode::None => Ok(lab_caller(parts, &state.config.default_project)),
        }
    }
}

fn lab_caller(parts: &Parts, default_project: &str) -> Caller {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    let project_id = header("x-project-id")
        .or_else(|| header("x-tenant-id"))
        .unwrap_or(default_project)
        .to_owned();
    let roles = match header("x-roles") {
        Some(roles) => roles
            .split(',')
            .map(|role| role.trim().to_ascii_lowercase())
            .filter(|role| !role.is_empty())
            .collect(),
        None => LAB_ROLES.iter().map(|role| role.to_string()).collect(),
    };
    Caller {
        project_id,
        user_id: header("x-user-id").map(str::to_owned),
        roles,
    }
}
