//! The REST API under `/api/v1`, one module per resource. Handlers
//! authenticate (the `Caller` extractor), validate, ask
//! `Caller::authorize`, then commit changes and their audit event together.

pub mod apikeys;
pub mod audit;
pub mod auth;
pub mod authorities;
pub mod certificates;
pub mod channels;
pub mod claims;
pub mod devices;
pub mod import;
pub mod messages;
pub mod ops;
pub mod tenants;
pub mod users;

use std::sync::Arc;

use moat_core::page::{DEFAULT_LIMIT, ListQuery, MAX_LIMIT};
use moat_core::validate::Invalid;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::problem::ApiError;
use crate::state::AppState;

/// Every route of the API, with its OpenAPI description.
pub fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::whoami))
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(tenants::get, tenants::update, tenants::delete))
        .routes(routes!(users::create, users::list))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(users::revoke_sessions))
        .routes(routes!(devices::create, devices::list))
        .routes(routes!(devices::get, devices::update, devices::delete))
        .routes(routes!(import::import))
        .routes(routes!(devices::create_key, devices::list_keys))
        .routes(routes!(devices::revoke_key))
        .routes(routes!(devices::connections))
        .routes(routes!(channels::create, channels::list))
        .routes(routes!(channels::get, channels::update, channels::delete))
        .routes(routes!(channels::connections))
        .routes(routes!(channels::connect, channels::disconnect))
        .routes(routes!(apikeys::create, apikeys::list))
        .routes(routes!(apikeys::get, apikeys::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(certificates::create, certificates::list))
        .routes(routes!(certificates::revoke))
        .routes(routes!(certificates::renew_own))
        .routes(routes!(certificates::rotate_own_key))
        .routes(routes!(certificates::root_pem))
        .routes(routes!(certificates::root_crl))
        .routes(routes!(certificates::ca_crl))
        .routes(routes!(authorities::list, authorities::register))
        .routes(routes!(
            authorities::get,
            authorities::update,
            authorities::delete
        ))
        .routes(routes!(authorities::registration_code))
        .routes(routes!(authorities::expiring))
        .routes(routes!(authorities::renew_server))
        .routes(routes!(claims::create, claims::list))
        .routes(routes!(claims::claim_device))
        .routes(routes!(claims::bootstrap))
        .routes(routes!(messages::publish, messages::read::list))
        .routes(routes!(messages::publish_subtopic))
        .routes(routes!(messages::read::archive))
        .routes(routes!(
            messages::ws::live,
            messages::ws::publish_ws_subtopic
        ))
}

/// Turns `limit` and `cursor` query parameters into a list query.
pub(crate) fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<ListQuery, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Invalid::one("limit", format!("must be between 1 and {MAX_LIMIT}")).into());
    }
    let after = match cursor {
        Some(c) => Some(
            c.parse()
                .map_err(|_| ApiError::unprocessable("cursor", "not a cursor from this list"))?,
        ),
        None => None,
    };
    Ok(ListQuery {
        limit,
        after,
        name: None,
        tag: None,
    })
}

/// An optional JSON body: empty means the defaults.
pub(crate) fn optional_body<T: Default + for<'de> serde::Deserialize<'de>>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid body: {e}"),
        )
    })
}

pub(crate) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Standard tags of the OpenAPI document.
pub(crate) const TAG_AUTH: &str = "auth";
pub(crate) const TAG_TENANTS: &str = "tenants";
pub(crate) const TAG_USERS: &str = "users";
pub(crate) const TAG_DEVICES: &str = "devices";
pub(crate) const TAG_CHANNELS: &str = "channels";
pub(crate) const TAG_KEYS: &str = "api keys";
pub(crate) const TAG_AUDIT: &str = "audit";
pub(crate) const TAG_PKI: &str = "pki";
pub(crate) const TAG_MESSAGES: &str = "messages";
