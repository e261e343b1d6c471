//! Reading the audit log. (Verifying the chain is `moat audit verify`, run
//! beside the database.)

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use moat_core::TenantId;
use moat_core::audit::{AuditEvent, Outcome};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::page::{DEFAULT_LIMIT, MAX_LIMIT, Page};
use moat_core::store::AuditFilter;
use serde::Deserialize;
use utoipa::IntoParams;

use super::TAG_AUDIT;
use crate::auth::Caller;
use crate::extract::{Json, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Events of this tenant and the tenants below it; defaults to the
    /// caller's own. The root tenant's view includes events that belong to
    /// no tenant (failed sign-ins with unknown usernames).
    pub tenant_id: Option<TenantId>,
    /// `user:<id>`, `apikey:<id>`, `device:<id>`, `anonymous`, `system`.
    pub actor: Option<String>,
    /// An action (`device.create`) or a prefix ending in `.` (`auth.`).
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<Outcome>,
    /// RFC 3339; inclusive.
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339; inclusive.
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists audit events, newest first.
#[utoipa::path(get, path = "/audit", tag = TAG_AUDIT, params(AuditParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::Audit, &path),
            "audit log",
            "audit.read",
        )
        .await?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let before_seq = match p.cursor.as_deref() {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::unprocessable("cursor", "not a cursor from this list"))?,
        ),
        None => None,
    };
    let filter = AuditFilter {
        tenant: (path.0.len() > 1).then_some(path),
        actor: p.actor,
        action: p.action,
        target: p.target,
        outcome: p.outcome,
        from: p.from,
        to: p.to,
        before_seq,
        limit: limit + 1,
    };
    let mut items = s.store.audit_events(&filter).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}
