//! The storage port. Core defines it; `moat-store` implements it on embedded
//! SQLite, and a PostgreSQL backend can follow without touching core.
//!
//! Writes go through one method, [`Store::apply`]: a batch of [`Change`]s and
//! the audit event that records them commit in one transaction, so no state
//! change is ever missing from the audit log, and none is logged that did not
//! happen. `apply` returns only once the transaction is durable.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEvent, AuditRecord, Break, Outcome};
use crate::credential::{ApiKey, DeviceKey, RefreshToken};
use crate::domain::*;
use crate::ids::*;
use crate::page::{ListQuery, Page};
use crate::pki::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing a change refers to does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change contradicts what is stored: a taken name, a tenant that
    /// still has children, a refresh token already used.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be decrypted with the key given.
    #[error(
        "cannot open the database: the master key is wrong, or the file is not a Moat database"
    )]
    WrongKey,
    /// The database was written by a newer Moat.
    #[error(
        "the database schema is version {found}, newer than this Moat knows ({known}); upgrade Moat"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("storage failed: {0}")]
    Backend(String),
}

/// One state change. A batch of them commits atomically.
#[derive(Clone, Debug)]
pub enum Change {
    InsertTenant(Tenant),
    UpdateTenant(Tenant),
    /// Refused with `Conflict` while the tenant has children, users,
    /// devices, channels or API keys.
    DeleteTenant(TenantId),
    InsertUser(User),
    UpdateUser(User),
    /// Also removes the user's refresh tokens.
    DeleteUser(UserId),
    InsertDevice(Device),
    UpdateDevice(Device),
    /// Also removes the device's connections and keys.
    DeleteDevice(DeviceId),
    InsertChannel(Channel),
    UpdateChannel(Channel),
    /// Also removes the channel's connections.
    DeleteChannel(ChannelId),
    /// Creates or replaces the connection of a device to a channel.
    PutConnection(Connection),
    DeleteConnection {
        channel_id: ChannelId,
        device_id: DeviceId,
    },
    InsertApiKey(ApiKey),
    RevokeApiKey {
        id: ApiKeyId,
        at: DateTime<Utc>,
    },
    InsertDeviceKey(DeviceKey),
    RevokeDeviceKey {
        id: DeviceKeyId,
        at: DateTime<Utc>,
    },
    InsertRefreshToken(RefreshToken),
    /// Marks a refresh token used; `Conflict` if it already was, which is
    /// how two concurrent rotations of one token are told apart.
    UseRefreshToken {
        id: RefreshTokenId,
        at: DateTime<Utc>,
    },
    RevokeRefreshFamily {
        family_id: RefreshTokenId,
        at: DateTime<Utc>,
    },
    RevokeUserRefreshTokens {
        user_id: UserId,
        at: DateTime<Utc>,
    },
    /// Ends a device key's life at `at` unless it ends sooner (a rotation's
    /// overlap).
    ExpireDeviceKey {
        id: DeviceKeyId,
        at: DateTime<Utc>,
    },
    /// Moves a device into another tenant (claiming); its connections go.
    MoveDevice {
        id: DeviceId,
        tenant_id: TenantId,
        state: DeviceState,
        at: DateTime<Utc>,
    },
    InsertAuthority(Authority),
    /// Changes a CA's just-in-time mode.
    UpdateAuthority(Authority),
    DeleteAuthority(AuthorityId),
    /// `Conflict` if a certificate with the same fingerprint is known.
    InsertCertificate(Certificate),
    /// Revokes a certificate at `at` (kept if it was revoked sooner).
    RevokeCertificate {
        id: CertificateId,
        at: DateTime<Utc>,
        reason: String,
    },
    /// Revokes every certificate of a device not revoked by `at`.
    RevokeDeviceCertificates {
        device_id: DeviceId,
        at: DateTime<Utc>,
        reason: String,
    },
    /// The code a tenant's own CA must sign a verification certificate for.
    PutRegistrationCode {
        tenant_id: TenantId,
        code: String,
        expires_at: DateTime<Utc>,
    },
    InsertClaimCode(ClaimCode),
    /// Marks a code claimed; `Conflict` if it already was.
    ClaimWithCode {
        id: ClaimCodeId,
        by: String,
        at: DateTime<Utc>,
    },
    /// Spends a claimed code; `Conflict` if it was already spent.
    UseClaimCode {
        id: ClaimCodeId,
        at: DateTime<Utc>,
    },
    /// A named secret (CA key material, wrapped); replaces any earlier value.
    PutSecret {
        name: String,
        value: Vec<u8>,
    },
}

/// Which audit events to read, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only events of this tenant and the tenants below it; `None` = all,
    /// including events that belong to no tenant.
    pub tenant: Option<TenantPath>,
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (`device.` for every device action).
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<Outcome>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only events with a smaller sequence number (the cursor).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// What verifying the audit chain found.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditReport {
    /// Events checked before the end or the first break.
    pub checked: i64,
    /// The last good event's sequence number and hash.
    pub head_seq: i64,
    pub head_hash: String,
    pub broken: Option<Break>,
}

/// Which connections to list.
#[derive(Clone, Copy, Debug)]
pub enum ConnectionsOf {
    Channel(ChannelId),
    Device(DeviceId),
}

/// Every connection of a channel or of a device, page after page.
pub async fn all_connections(
    store: &dyn Store,
    of: ConnectionsOf,
) -> Result<Vec<Connection>, StoreError> {
    let mut out = Vec::new();
    let mut q = ListQuery::first(1000);
    loop {
        let page = store.connections(of, &q).await?;
        out.extend(page.items);
        match page
            .next_cursor
            .and_then(|c| uuid::Uuid::try_parse(&c).ok())
        {
            Some(after) => q.after = Some(after),
            None => return Ok(out),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `changes` and appends `audit`, all or nothing; durable on return.
    async fn apply(
        &self,
        changes: Vec<Change>,
        audit: Option<AuditRecord>,
    ) -> Result<Option<AuditEvent>, StoreError>;

    /// Appends an audit event alone (authentication failures, denials).
    async fn append_audit(&self, audit: AuditRecord) -> Result<AuditEvent, StoreError> {
        self.apply(Vec::new(), Some(audit))
            .await?
            .ok_or_else(|| StoreError::Backend("audit event not appended".into()))
    }

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;
    /// The direct children of `parent`; with `None`, the root tenants.
    async fn tenants(
        &self,
        parent: Option<TenantId>,
        q: &ListQuery,
    ) -> Result<Page<Tenant>, StoreError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// `name` filters on username and display name; `tag` is ignored.
    async fn users(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<User>, StoreError>;

    async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError>;
    async fn devices(
        &self,
        tenant: TenantId,
        state: Option<DeviceState>,
        q: &ListQuery,
    ) -> Result<Page<Device>, StoreError>;

    /// The devices of `tenant` with one of `names` (exact names; a bulk
    /// import finds what a previous run created).
    async fn devices_named(
        &self,
        tenant: TenantId,
        names: &[String],
    ) -> Result<Vec<Device>, StoreError>;

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>, StoreError>;
    async fn channels(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<Channel>, StoreError>;

    async fn connection(
        &self,
        channel: ChannelId,
        device: DeviceId,
    ) -> Result<Option<Connection>, StoreError>;
    /// Paged by the other side's id; `name` and `tag` are ignored.
    async fn connections(
        &self,
        of: ConnectionsOf,
        q: &ListQuery,
    ) -> Result<Page<Connection>, StoreError>;

    async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError>;
    /// `name` filters on the key's name; `tag` is ignored.
    async fn api_keys(&self, tenant: TenantId, q: &ListQuery) -> Result<Page<ApiKey>, StoreError>;

    async fn device_key(&self, id: DeviceKeyId) -> Result<Option<DeviceKey>, StoreError>;
    async fn device_keys(&self, device: DeviceId) -> Result<Vec<DeviceKey>, StoreError>;

    async fn refresh_token(&self, id: RefreshTokenId) -> Result<Option<RefreshToken>, StoreError>;

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    /// Walks the whole chain in order and reports the first break.
    async fn verify_audit(&self) -> Result<AuditReport, StoreError>;

    async fn authority(&self, id: AuthorityId) -> Result<Option<Authority>, StoreError>;
    /// A tenant's CAs, oldest first.
    async fn authorities(&self, tenant: TenantId) -> Result<Vec<Authority>, StoreError>;
    /// Every CA, for the trust index.
    async fn all_authorities(&self) -> Result<Vec<Authority>, StoreError>;

    async fn certificate(&self, id: CertificateId) -> Result<Option<Certificate>, StoreError>;
    async fn certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<Certificate>, StoreError>;
    /// A device's certificates, oldest first.
    async fn device_certificates(&self, device: DeviceId) -> Result<Vec<Certificate>, StoreError>;
    /// Certificates not yet expired at `now` (revoked ones included): what
    /// the trust index and CRLs are built from.
    async fn live_certificates(&self, now: DateTime<Utc>) -> Result<Vec<Certificate>, StoreError>;
    /// Certificates of a CA revoked by `now` and not yet expired.
    async fn revoked_certificates(
        &self,
        authority: AuthorityId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Certificate>, StoreError>;
    /// Certificates in `tenant`'s subtree that are valid now and expire
    /// before `before`, soonest first, at most `limit`.
    async fn expiring_certificates(
        &self,
        tenant: &TenantPath,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Certificate>, StoreError>;
    /// Channels that keep messages for a limited time, with their days.
    async fn retained_channels(&self) -> Result<Vec<(ChannelId, u32)>, StoreError>;
    /// Devices in `quarantined` or `revoked` state, for the trust index.
    async fn blocked_devices(&self) -> Result<Vec<(DeviceId, DeviceState)>, StoreError>;

    /// A tenant's current registration code and its expiry.
    async fn registration_code(
        &self,
        tenant: TenantId,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError>;
    async fn claim_code_by_hash(&self, hash: &str) -> Result<Option<ClaimCode>, StoreError>;
    /// The claim codes issued in `tenant` (where their devices wait), oldest
    /// first; `name` and `tag` are ignored.
    async fn claim_codes(
        &self,
        tenant: TenantId,
        q: &ListQuery,
    ) -> Result<Page<ClaimCode>, StoreError>;
    /// Device keys in `tenant`'s subtree, not revoked, that expire in
    /// `[now, before)`, soonest first, at most `limit`.
    async fn expiring_device_keys(
        &self,
        tenant: &TenantPath,
        now: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeviceKey>, StoreError>;

    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
}
