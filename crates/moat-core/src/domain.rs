//! The entities Moat manages and their states.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::*;

/// The chain of tenants from the root down to (and including) one tenant.
///
/// Reach is decided on paths: a principal reaches a resource when the
/// principal's tenant stands on the resource's path. That is how a parent's
/// admins reach into children but never sideways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct TenantPath(pub Vec<TenantId>);

impl TenantPath {
    pub fn root(id: TenantId) -> Self {
        Self(vec![id])
    }

    /// The path of a new child of this path's tenant.
    pub fn child(&self, id: TenantId) -> Self {
        let mut v = self.0.clone();
        v.push(id);
        Self(v)
    }

    /// The tenant this path leads to.
    pub fn tenant(&self) -> TenantId {
        *self.0.last().expect("a tenant path is never empty")
    }

    pub fn parent(&self) -> Option<TenantId> {
        self.0.len().checked_sub(2).map(|i| self.0[i])
    }

    /// Whether `tenant` is this path's tenant or one of its ancestors.
    pub fn contains(&self, tenant: TenantId) -> bool {
        self.0.contains(&tenant)
    }

    /// Encoded for storage: ids joined by `/`, with a trailing `/` so that a
    /// prefix match finds exactly the subtree.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 37);
        for id in &self.0 {
            s.push_str(&id.to_string());
            s.push('/');
        }
        s
    }

    pub fn decode(s: &str) -> Option<Self> {
        let ids: Result<Vec<TenantId>, _> = s
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect();
        match ids {
            Ok(v) if !v.is_empty() => Some(Self(v)),
            _ => None,
        }
    }
}

/// A tenant: the isolation boundary; may have child tenants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    /// The parent tenant; `null` for the root tenant.
    pub parent_id: Option<TenantId>,
    /// Ancestors from the root down to this tenant itself.
    pub path: TenantPath,
    pub name: String,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a user (or an API key) may do within its tenant and the tenants below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users, keys and child tenants.
    Admin,
    /// Controls the fleet: devices, channels, connections, commands; not users or keys.
    Operator,
    /// Monitoring: reads devices, channels and connections; changes nothing.
    Viewer,
    /// Reads the audit log.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A person (or a service) who signs in with a password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    /// Unique across the whole platform; used to sign in.
    pub username: String,
    pub display_name: String,
    pub role: Role,
    /// A disabled user cannot sign in and its tokens stop working.
    pub disabled: bool,
    /// Argon2id PHC string. Never serialized to clients.
    #[serde(skip_serializing, default)]
    #[schema(ignore)]
    pub password_hash: String,
    /// Access tokens issued before this instant are refused: this is how
    /// "revoke all sessions" reaches tokens that are already out.
    #[serde(skip_serializing, default = "epoch")]
    #[schema(ignore)]
    pub sessions_valid_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// The life of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Known but not yet allowed to connect.
    Pending,
    /// Allowed to connect and exchange messages.
    Active,
    /// Cut off for inspection; reversible.
    Quarantined,
    /// Permanently cut off.
    Revoked,
}

impl DeviceState {
    pub const ALL: [DeviceState; 4] = [
        DeviceState::Pending,
        DeviceState::Active,
        DeviceState::Quarantined,
        DeviceState::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Active => "active",
            DeviceState::Quarantined => "quarantined",
            DeviceState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a device in this state may hold sessions.
    pub fn may_connect(self) -> bool {
        self == DeviceState::Active
    }

    /// Whether the state may change from `self` to `to`. Revocation is final.
    pub fn may_become(self, to: DeviceState) -> bool {
        self == to || self != DeviceState::Revoked
    }
}

/// A thing with an identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub name: String,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    pub state: DeviceState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a channel treats the payloads published to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadPolicy {
    /// SenML (RFC 8428), validated and normalized into records.
    Senml,
    /// Any JSON document.
    Json,
    /// Bytes kept as they are.
    Opaque,
    /// Device-sealed payloads that gateways relay but cannot read.
    Sealed,
    /// End-to-end encrypted: the platform stores but can never read.
    E2e,
}

impl PayloadPolicy {
    pub const ALL: [PayloadPolicy; 5] = [
        PayloadPolicy::Senml,
        PayloadPolicy::Json,
        PayloadPolicy::Opaque,
        PayloadPolicy::Sealed,
        PayloadPolicy::E2e,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PayloadPolicy::Senml => "senml",
            PayloadPolicy::Json => "json",
            PayloadPolicy::Opaque => "opaque",
            PayloadPolicy::Sealed => "sealed",
            PayloadPolicy::E2e => "e2e",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A named message stream owned by a tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Channel {
    pub id: ChannelId,
    pub tenant_id: TenantId,
    pub name: String,
    pub tags: Vec<String>,
    pub metadata: serde_json::Value,
    pub payload_policy: PayloadPolicy,
    /// How long messages are kept, in days; `null` keeps them forever.
    pub retention_days: Option<u32>,
    /// The largest payload accepted, in bytes [default 65536, at most 1 MiB].
    pub max_payload: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A device's rights on a channel: the topic ACL the protocol adapters read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Connection {
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub channel_id: ChannelId,
    pub publish: bool,
    pub subscribe: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tenant_paths_survive_encoding_and_prefixes_are_subtrees(depth in 1usize..6, cut in 0usize..6) {
            let mut path = TenantPath::root(TenantId::new());
            for _ in 1..depth {
                path = path.child(TenantId::new());
            }
            prop_assert_eq!(TenantPath::decode(&path.encode()), Some(path.clone()));
            // An ancestor's encoding is a prefix of every descendant's, and
            // of nothing else's.
            let ancestor = TenantPath(path.0[..=cut.min(depth - 1)].to_vec());
            prop_assert!(path.encode().starts_with(&ancestor.encode()));
            prop_assert!(path.contains(ancestor.tenant()));
            let stranger = TenantPath::root(TenantId::new());
            prop_assert!(!path.encode().starts_with(&stranger.encode()));
        }
    }

    #[test]
    fn malformed_paths_do_not_decode() {
        assert_eq!(TenantPath::decode(""), None);
        assert_eq!(TenantPath::decode("not-a-uuid/"), None);
    }

    #[test]
    fn revocation_is_final() {
        for to in DeviceState::ALL {
            assert_eq!(
                DeviceState::Revoked.may_become(to),
                to == DeviceState::Revoked
            );
            assert!(DeviceState::Quarantined.may_become(to));
        }
    }
}
