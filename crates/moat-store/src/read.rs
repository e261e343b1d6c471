//! The `Store` trait: reads on the reader connections, writes through
//! `write::apply`, and the audit log's filters and verification.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use moat_core::Connection as DeviceConnection;
use moat_core::audit::{AuditEvent, AuditRecord};
use moat_core::credential::{ApiKey, DeviceKey, RefreshToken};
use moat_core::page::{ListQuery, Page};
use moat_core::pki::*;
use moat_core::store::{AuditFilter, AuditReport, Change, ConnectionsOf, Store, StoreError};
use moat_core::*;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};

use crate::rows::{self, ms};
use crate::{SqliteStore, backend, write};

/// Events read per batch while verifying the chain.
const VERIFY_BATCH: i64 = 1000;

/// A `SELECT *` with conditions, keyset-paged on `order`.
struct Query {
    table: &'static str,
    order: &'static str,
    conds: Vec<String>,
    args: Vec<Value>,
}

impl Query {
    fn new(table: &'static str, order: &'static str) -> Self {
        Self {
            table,
            order,
            conds: Vec::new(),
            args: Vec::new(),
        }
    }

    fn eq(mut self, col: &str, v: impl Into<Value>) -> Self {
        self.args.push(v.into());
        self.conds.push(format!("{col} = ?{}", self.args.len()));
        self
    }

    /// The name filter (case-insensitive substring over `cols`) and the tag
    /// filter of a list query, and its cursor.
    fn list(mut self, q: &ListQuery, name_cols: &[&str], tags: bool) -> Self {
        if let Some(after) = q.after {
            self.args.push(after.to_string().into());
            self.conds
                .push(format!("{} > ?{}", self.order, self.args.len()));
        }
        if let Some(name) = &q.name {
            self.args.push(name.to_lowercase().into());
            let n = self.args.len();
            let any: Vec<String> = name_cols
                .iter()
                .map(|c| format!("instr(lower({c}), ?{n}) > 0"))
                .collect();
            self.conds.push(format!("({})", any.join(" OR ")));
        }
        if let (true, Some(tag)) = (tags, &q.tag) {
            self.args.push(tag.clone().into());
            self.conds.push(format!(
                "EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?{})",
                self.args.len()
            ));
        }
        self
    }

    /// The rows, at most `limit` of them.
    fn rows<T>(
        self,
        conn: &Connection,
        limit: Option<u64>,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut sql = format!("SELECT * FROM {}", self.table);
        if !self.conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conds.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY {}", self.order));
        if let Some(l) = limit {
            sql.push_str(&format!(" LIMIT {l}"));
        }
        let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(self.args), map)
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn page<T>(
        self,
        conn: &Connection,
        q: &ListQuery,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
        id: fn(&T) -> uuid::Uuid,
    ) -> Result<Page<T>, StoreError> {
        // One more than the page: its presence says there is a next page.
        Ok(Page::from_rows(
            self.rows(conn, Some(u64::from(q.limit) + 1), map)?,
            q.limit,
            id,
        ))
    }

    fn one<T>(
        self,
        conn: &Connection,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(conn, None, map)?.into_iter().next())
    }
}

fn by_id<T: Send + 'static>(
    table: &'static str,
    id: uuid::Uuid,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> impl FnOnce(&Connection) -> Result<Option<T>, StoreError> + Send + 'static {
    move |c| Query::new(table, "id").eq("id", id.to_string()).one(c, map)
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply(
        &self,
        changes: Vec<Change>,
        audit: Option<AuditRecord>,
    ) -> Result<Option<AuditEvent>, StoreError> {
        self.write(move |conn, chain| write::apply(conn, chain, changes, audit))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.read(by_id("tenants", id.0, rows::tenant)).await
    }

    async fn tenants(
        &self,
        parent: Option<TenantId>,
        q: &ListQuery,
    ) -> Result<Page<Tenant>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let base = Query::new("tenants", "id");
            let base = match parent {
                Some(p) => base.eq("parent_id", p.to_string()),
                None => Query {
                    conds: vec!["parent_id IS NULL".into()],
                    ..base
                },
            };
            base.list(&q, &["name"], true)
                .page(c, &q, rows::tenant, |t| t.id.0)
        })
        .await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(by_id("users", id.0, rows::user)).await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.read(move |c| {
            Query::new("users", "id")
                .eq("username", username)
                .one(c, rows::user)
        })
        .await
    }

    async fn users(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<User>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            Query::new("users", "id")
                .eq("tenant_id", tenant.to_string())
                .list(&q, &["username", "display_name"], false)
                .page(c, &q, rows::user, |u| u.id.0)
        })
        .await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        self.read(by_id("devices", id.0, rows::device)).await
    }

    async fn devices(
        &self,
        tenant: TenantId,
        state: Option<DeviceState>,
        q: &ListQuery,
    ) -> Result<Page<Device>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let mut query = Query::new("devices", "id").eq("tenant_id", tenant.to_string());
            if let Some(s) = state {
                query = query.eq("state", s.as_str().to_owned());
            }
            query
                .list(&q, &["name"], true)
                .page(c, &q, rows::device, |d| d.id.0)
        })
        .await
    }

    async fn devices_named(
        &self,
        tenant: TenantId,
        names: &[String],
    ) -> Result<Vec<Device>, StoreError> {
        let names = serde_json::to_string(names).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.read(move |c| {
            let mut q = Query::new("devices", "id").eq("tenant_id", tenant.to_string());
            q.args.push(names.into());
            q.conds.push(format!(
                "name IN (SELECT value FROM json_each(?{}))",
                q.args.len()
            ));
            q.rows(c, None, rows::device)
        })
        .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>, StoreError> {
        self.read(by_id("channels", id.0, rows::channel)).await
    }

    async fn channels(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<Channel>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            Query::new("channels", "id")
                .eq("tenant_id", tenant.to_string())
                .list(&q, &["name"], true)
                .page(c, &q, rows::channel, |x| x.id.0)
        })
        .await
    }

    async fn connection(
        &self,
        channel: ChannelId,
        device: DeviceId,
    ) -> Result<Option<DeviceConnection>, StoreError> {
        self.read(move |c| {
            Query::new("connections", "device_id")
                .eq("channel_id", channel.to_string())
                .eq("device_id", device.to_string())
                .one(c, rows::connection)
        })
        .await
    }

    async fn connections(
        &self,
        of: ConnectionsOf,
        q: &ListQuery,
    ) -> Result<Page<DeviceConnection>, StoreError> {
        let q = ListQuery {
            name: None,
            tag: None,
            ..q.clone()
        };
        self.read(move |c| match of {
            ConnectionsOf::Channel(ch) => Query::new("connections", "device_id")
                .eq("channel_id", ch.to_string())
                .list(&q, &[], false)
                .page(c, &q, rows::connection, |x| x.device_id.0),
            ConnectionsOf::Device(d) => Query::new("connections", "channel_id")
                .eq("device_id", d.to_string())
                .list(&q, &[], false)
                .page(c, &q, rows::connection, |x| x.channel_id.0),
        })
        .await
    }

    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        self.read(by_id("api_keys", id.0, rows::api_key)).await
    }

    async fn api_keys(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<ApiKey>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            Query::new("api_keys", "id")
                .eq("tenant_id", tenant.to_string())
                .list(&q, &["name"], false)
                .page(c, &q, rows::api_key, |k| k.id.0)
        })
        .await
    }

    async fn device_key(&self, id: DeviceKeyId) -> Result<Option<DeviceKey>, StoreError> {
        self.read(by_id("device_keys", id.0, rows::device_key))
            .await
    }

    async fn device_keys(&self, device: DeviceId) -> Result<Vec<DeviceKey>, StoreError> {
        self.read(move |c| {
            Query::new("device_keys", "id")
                .eq("device_id", device.to_string())
                .rows(c, None, rows::device_key)
        })
        .await
    }

    async fn refresh_token(&self, id: RefreshTokenId) -> Result<Option<RefreshToken>, StoreError> {
        self.read(by_id("refresh_tokens", id.0, rows::refresh_token))
            .await
    }

    async fn audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let f = f.clone();
        self.read(move |c| {
            let mut q = Query::new("audit", "seq DESC");
            if let Some(path) = &f.tenant {
                // A prefix of the encoded path is exactly the subtree; ids
                // hold no LIKE wildcards, but compare with substr anyway.
                let prefix = path.encode();
                q.args.push(Value::Integer(prefix.len() as i64));
                q.args.push(prefix.into());
                let n = q.args.len();
                q.conds
                    .push(format!("substr(tenant_path, 1, ?{}) = ?{n}", n - 1));
            }
            for (col, v) in [("actor", &f.actor), ("target", &f.target)] {
                if let Some(v) = v {
                    q = q.eq(col, v.clone());
                }
            }
            if let Some(action) = &f.action {
                if let Some(stem) = action.strip_suffix('.') {
                    // Text compares bytewise (BINARY collation), so the
                    // actions starting with `stem.` are exactly those from
                    // `stem.` up to, not including, `stem/` ('/' follows
                    // '.'). A range, unlike substr (which counts
                    // characters, not bytes), holds for any UTF-8 and can
                    // use an index on `action`.
                    q.args.push(action.clone().into());
                    q.args.push(format!("{stem}/").into());
                    let n = q.args.len();
                    q.conds
                        .push(format!("action >= ?{} AND action < ?{n}", n - 1));
                } else {
                    q = q.eq("action", action.clone());
                }
            }
            if let Some(o) = f.outcome {
                q = q.eq("outcome", o.as_str().to_owned());
            }
            for (op, t) in [(">=", f.from), ("<=", f.to)] {
                if let Some(t) = t {
                    q.args.push(ms(t).into());
                    q.conds.push(format!("time {op} ?{}", q.args.len()));
                }
            }
            if let Some(before) = f.before_seq {
                q.args.push(before.into());
                q.conds.push(format!("seq < ?{}", q.args.len()));
            }
            q.rows(c, Some(u64::from(f.limit)), rows::audit_event)
        })
        .await
    }

    async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        let chain = std::sync::Arc::clone(&self.chain);
        self.read(move |c| {
            let mut verifier = chain.verifier();
            let mut after = 0i64;
            let mut checked = 0i64;
            loop {
                let batch = audit_after(c, after, VERIFY_BATCH)?;
                if batch.is_empty() {
                    break;
                }
                for e in &batch {
                    if let Err(b) = verifier.push(e) {
                        let (head_seq, head_hash) = verifier.head();
                        return Ok(AuditReport {
                            checked,
                            head_seq,
                            head_hash: head_hash.to_owned(),
                            broken: Some(b),
                        });
                    }
                    checked += 1;
                }
                after = batch.last().map_or(after, |e| e.seq);
            }
            let (head_seq, head_hash) = verifier.head();
            Ok(AuditReport {
                checked,
                head_seq,
                head_hash: head_hash.to_owned(),
                broken: None,
            })
        })
        .await
    }

    async fn authority(&self, id: AuthorityId) -> Result<Option<Authority>, StoreError> {
        self.read(by_id("authorities", id.0, rows::authority)).await
    }

    async fn authorities(&self, tenant: TenantId) -> Result<Vec<Authority>, StoreError> {
        self.read(move |c| {
            Query::new("authorities", "id")
                .eq("tenant_id", tenant.to_string())
                .rows(c, None, rows::authority)
        })
        .await
    }

    async fn all_authorities(&self) -> Result<Vec<Authority>, StoreError> {
        self.read(|c| Query::new("authorities", "id").rows(c, None, rows::authority))
            .await
    }

    async fn certificate(&self, id: CertificateId) -> Result<Option<Certificate>, StoreError> {
        self.read(by_id("certificates", id.0, rows::certificate))
            .await
    }

    async fn certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Certificate>, StoreError> {
        let fp = fingerprint.to_owned();
        self.read(move |c| {
            Query::new("certificates", "id")
                .eq("fingerprint", fp)
                .one(c, rows::certificate)
        })
        .await
    }

    async fn device_certificates(&self, device: DeviceId) -> Result<Vec<Certificate>, StoreError> {
        self.read(move |c| {
            Query::new("certificates", "id")
                .eq("device_id", device.to_string())
                .rows(c, None, rows::certificate)
        })
        .await
    }

    async fn live_certificates(&self, now: DateTime<Utc>) -> Result<Vec<Certificate>, StoreError> {
        self.read(move |c| {
            let mut q = Query::new("certificates", "id");
            q.args.push(ms(now).into());
            q.conds.push("not_after >= ?1".into());
            q.rows(c, None, rows::certificate)
        })
        .await
    }

    async fn revoked_certificates(
        &self,
        authority: AuthorityId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Certificate>, StoreError> {
        self.read(move |c| {
            let mut q = Query::new("certificates", "id").eq("authority_id", authority.to_string());
            q.args.push(ms(now).into());
            let n = q.args.len();
            q.conds
                .push(format!("revoked_at <= ?{n} AND not_after >= ?{n}"));
            q.rows(c, None, rows::certificate)
        })
        .await
    }

    async fn expiring_certificates(
        &self,
        tenant: &TenantPath,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Certificate>, StoreError> {
        let prefix = tenant.encode();
        self.read(move |c| {
            let mut q = Query::new("certificates", "not_after, id");
            q.args.push(Value::Integer(prefix.len() as i64));
            q.args.push(prefix.into());
            q.args.push(ms(now).into());
            q.args.push(ms(before).into());
            q.conds.push("substr(tenant_path, 1, ?1) = ?2".into());
            q.conds.push("not_after >= ?3 AND not_after < ?4".into());
            q.conds
                .push("(revoked_at IS NULL OR revoked_at > ?3)".into());
            q.rows(c, Some(u64::from(limit)), rows::certificate)
        })
        .await
    }

    async fn retained_channels(&self) -> Result<Vec<(ChannelId, u32)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, retention_days FROM channels WHERE retention_days IS NOT NULL",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, days) = row.map_err(backend)?;
                let id = id
                    .parse::<ChannelId>()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                out.push((id, days));
            }
            Ok(out)
        })
        .await
    }

    async fn blocked_devices(&self) -> Result<Vec<(DeviceId, DeviceState)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, state FROM devices WHERE state IN ('quarantined', 'revoked')",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, state) = row.map_err(backend)?;
                let id = id
                    .parse::<DeviceId>()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let state = DeviceState::parse(&state)
                    .ok_or_else(|| StoreError::Backend(format!("unknown state {state}")))?;
                out.push((id, state));
            }
            Ok(out)
        })
        .await
    }

    async fn registration_code(
        &self,
        tenant: TenantId,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT code, expires_at FROM registration_codes WHERE tenant_id = ?1",
                [tenant.to_string()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(backend)
            .map(|o| {
                o.map(|(code, at)| {
                    (
                        code,
                        DateTime::from_timestamp_millis(at).unwrap_or_default(),
                    )
                })
            })
        })
        .await
    }

    async fn claim_code_by_hash(&self, hash: &str) -> Result<Option<ClaimCode>, StoreError> {
        let h = hash.to_owned();
        self.read(move |c| {
            Query::new("claim_codes", "id")
                .eq("code_hash", h)
                .one(c, rows::claim_code)
        })
        .await
    }

    async fn claim_codes(
        &self,
        tenant: TenantId,
        q: &ListQuery,
    ) -> Result<Page<ClaimCode>, StoreError> {
        let q = ListQuery {
            name: None,
            tag: None,
            ..q.clone()
        };
        self.read(move |c| {
            Query::new("claim_codes", "id")
                .eq("tenant_id", tenant.to_string())
                .list(&q, &[], false)
                .page(c, &q, rows::claim_code, |x| x.id.0)
        })
        .await
    }

    async fn expiring_device_keys(
        &self,
        tenant: &TenantPath,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeviceKey>, StoreError> {
        let prefix = tenant.encode();
        self.read(move |c| {
            let mut q = Query::new("device_keys", "expires_at, id");
            q.args.push(Value::Integer(prefix.len() as i64));
            q.args.push(prefix.into());
            q.args.push(ms(now).into());
            q.args.push(ms(before).into());
            q.conds.push(
                "tenant_id IN (SELECT id FROM tenants WHERE substr(path, 1, ?1) = ?2)".into(),
            );
            q.conds
                .push("expires_at >= ?3 AND expires_at < ?4 AND revoked_at IS NULL".into());
            q.rows(c, Some(u64::from(limit)), rows::device_key)
        })
        .await
    }

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            c.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }
}

/// Audit events after `seq`, in order, for verification.
fn audit_after(c: &Connection, seq: i64, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT * FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(backend)?;
    let rows = stmt
        .query_map([seq, limit], rows::audit_event)
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}
