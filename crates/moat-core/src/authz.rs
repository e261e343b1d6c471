//! The one access decision: (principal, action, resource) → allow or deny.
//!
//! Every endpoint of every adapter asks [`authorize`]; nothing else decides.
//! Two questions are asked in order:
//!
//! 1. **Reach.** A principal reaches a resource when the principal's tenant is
//!    the resource's tenant or one of its ancestors. A parent's admins reach
//!    into children, never sideways or up. What is out of reach is answered
//!    [`Decision::NotFound`], so that another tenant's ids leak nothing.
//! 2. **Role.** Within reach, the role (or, for a device, its identity)
//!    decides; a refusal here is [`Decision::Forbidden`].

use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Role, TenantPath};
use crate::ids::*;

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    User(UserId),
    ApiKey(ApiKeyId),
    Device(DeviceId),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(id) => write!(f, "user:{id}"),
            Subject::ApiKey(id) => write!(f, "apikey:{id}"),
            Subject::Device(id) => write!(f, "device:{id}"),
        }
    }
}

/// An authenticated caller: who, in which tenant, with which role.
impl std::str::FromStr for Subject {
    type Err = ();

    /// The inverse of `Display`: `user:<id>`, `apikey:<id>`, `device:<id>`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (kind, id) = s.split_once(':').ok_or(())?;
        let id = Uuid::try_parse(id).map_err(drop)?;
        Ok(match kind {
            "user" => Subject::User(UserId(id)),
            "apikey" => Subject::ApiKey(ApiKeyId(id)),
            "device" => Subject::Device(DeviceId(id)),
            _ => return Err(()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: Subject,
    /// The principal's own tenant, with its ancestors.
    pub tenant: TenantPath,
    /// Users and API keys have a role; devices have none.
    pub role: Option<Role>,
}

impl Principal {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant.tenant()
    }
}

/// What kind of thing is acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Tenant,
    User,
    Device,
    DeviceKey,
    Channel,
    Connection,
    ApiKey,
    Audit,
    /// A device's X.509 certificate (`id`: the device, for a device's own).
    Certificate,
    /// A tenant's certificate authority.
    Authority,
    /// One-time codes with which devices are claimed into a tenant.
    ClaimCode,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 11] = [
        ResourceKind::Tenant,
        ResourceKind::User,
        ResourceKind::Device,
        ResourceKind::DeviceKey,
        ResourceKind::Channel,
        ResourceKind::Connection,
        ResourceKind::ApiKey,
        ResourceKind::Audit,
        ResourceKind::Certificate,
        ResourceKind::Authority,
        ResourceKind::ClaimCode,
    ];
}

/// What is done to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Create,
    /// Changes that need authority over the target: a user's role or
    /// disabled flag, a device's state, a tenant's name.
    Update,
    /// Changes a user may make to their own account: display name, password.
    UpdateProfile,
    Delete,
    /// Signs a user out everywhere.
    RevokeSessions,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Read,
        Action::Create,
        Action::Update,
        Action::UpdateProfile,
        Action::Delete,
        Action::RevokeSessions,
    ];
}

/// The thing acted on, located by its tenant's path.
///
/// For a tenant, `tenant` is the path of that tenant itself (for `Create`,
/// the path the new tenant will have).
#[derive(Clone, Copy, Debug)]
pub struct Resource<'a> {
    pub kind: ResourceKind,
    pub tenant: &'a TenantPath,
    pub id: Option<Uuid>,
}

impl<'a> Resource<'a> {
    pub fn new(kind: ResourceKind, tenant: &'a TenantPath) -> Self {
        Self {
            kind,
            tenant,
            id: None,
        }
    }

    pub fn with_id(kind: ResourceKind, tenant: &'a TenantPath, id: Uuid) -> Self {
        Self {
            kind,
            tenant,
            id: Some(id),
        }
    }
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Within reach, but not for this role.
    Forbidden,
    /// Out of reach: the caller must not learn that it exists.
    NotFound,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// Decides whether `principal` may do `action` to `resource`.
pub fn authorize(principal: &Principal, action: Action, resource: &Resource<'_>) -> Decision {
    if !resource.tenant.contains(principal.tenant_id()) {
        return Decision::NotFound;
    }
    let allowed = match (principal.subject, principal.role) {
        // A device reads itself, and renews its own credentials (the
        // resource's id is then the device's).
        (Subject::Device(id), _) => {
            resource.id == Some(id.0)
                && match resource.kind {
                    ResourceKind::Device => action == Action::Read,
                    ResourceKind::Certificate | ResourceKind::DeviceKey => action == Action::Create,
                    _ => false,
                }
        }
        (Subject::User(id), Some(role)) if is_self(id, resource) => self_service(role, action),
        (_, Some(role)) => role_allows(role, action, resource, principal),
        (_, None) => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

/// What a caller wants of a channel's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageAccess {
    Publish,
    /// Receive live messages or read stored ones.
    Subscribe,
}

/// Whether `principal` may publish to, or read, the channel `channel` of
/// `tenant`. A device needs its `connection` to the channel (the topic ACL)
/// with the right set; users and API keys need a role: admins and operators
/// publish and read, viewers read. Outside the caller's tenant: not found.
pub fn authorize_messages(
    principal: &Principal,
    access: MessageAccess,
    tenant: &TenantPath,
    channel: ChannelId,
    connection: Option<&crate::domain::Connection>,
) -> Decision {
    if !tenant.contains(principal.tenant_id()) {
        return Decision::NotFound;
    }
    // A device sees only its own tenant's channels: connections never
    // cross tenants, and a subtenant's channels are none of its business.
    if matches!(principal.subject, Subject::Device(_)) && tenant.tenant() != principal.tenant_id() {
        return Decision::NotFound;
    }
    let allowed = match (principal.subject, principal.role) {
        (Subject::Device(id), _) => connection.is_some_and(|c| {
            c.device_id == id
                && c.channel_id == channel
                && match access {
                    MessageAccess::Publish => c.publish,
                    MessageAccess::Subscribe => c.subscribe,
                }
        }),
        (_, Some(Role::Admin | Role::Operator)) => true,
        (_, Some(Role::Viewer)) => access == MessageAccess::Subscribe,
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

fn is_self(user: UserId, resource: &Resource<'_>) -> bool {
    resource.kind == ResourceKind::User && resource.id == Some(user.0)
}

/// What anyone may do to their own account. Changing one's own role or
/// deleting oneself is refused even to admins: it is how the last admin of a
/// tenant locks everyone out.
fn self_service(_role: Role, action: Action) -> bool {
    matches!(
        action,
        Action::Read | Action::UpdateProfile | Action::RevokeSessions
    )
}

fn role_allows(role: Role, action: Action, resource: &Resource<'_>, principal: &Principal) -> bool {
    use Action::*;
    use ResourceKind as K;
    let read = action == Read;
    match (role, resource.kind) {
        // A tenant is changed by the admins above it, never by its own.
        (Role::Admin, K::Tenant) => {
            read || (matches!(action, Create | Update | Delete)
                && resource.tenant.tenant() != principal.tenant_id())
        }
        (Role::Admin, K::User) => true,
        (Role::Admin, K::Audit) => read,
        (Role::Admin, _) => !matches!(action, UpdateProfile | RevokeSessions),
        (Role::Operator, K::Device | K::Channel | K::Connection) => {
            matches!(action, Read | Create | Update | Delete)
        }
        (Role::Operator | Role::Viewer, K::Tenant | K::Certificate | K::Authority) => read,
        (Role::Viewer, K::Device | K::Channel | K::Connection) => read,
        (Role::Auditor, K::Audit | K::Tenant | K::User) => read,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
