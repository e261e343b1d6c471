//! The decision function checked against a separately written statement of
//! the rules, over generated principals, actions and resources in a tree of
//! tenants: root → {a → a1, b → b1}.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

struct World {
    ids: Vec<TenantId>,
    parent: HashMap<TenantId, TenantId>,
}

impl World {
    fn new() -> Self {
        let ids: Vec<TenantId> = (0..5).map(|_| TenantId::new()).collect();
        // 0 = root, 1 = a, 2 = b, 3 = a1 (under a), 4 = b1 (under b)
        let parent = HashMap::from([
            (ids[1], ids[0]),
            (ids[2], ids[0]),
            (ids[3], ids[1]),
            (ids[4], ids[2]),
        ]);
        Self { ids, parent }
    }

    fn path(&self, t: TenantId) -> TenantPath {
        let mut v = vec![t];
        while let Some(p) = self.parent.get(v.last().unwrap()) {
            v.push(*p);
        }
        v.reverse();
        TenantPath(v)
    }

    /// Walks up from `t`; independent of `TenantPath::contains`.
    fn is_self_or_ancestor(&self, ancestor: TenantId, mut t: TenantId) -> bool {
        loop {
            if t == ancestor {
                return true;
            }
            match self.parent.get(&t) {
                Some(p) => t = *p,
                None => return false,
            }
        }
    }
}

/// The rules, as the issue states them, one line per grant.
fn granted(role: Role, kind: ResourceKind, action: Action) -> bool {
    use Action::*;
    use ResourceKind as K;
    const FLEET: [ResourceKind; 3] = [K::Device, K::Channel, K::Connection];
    const CRUD: [Action; 4] = [Read, Create, Update, Delete];
    match role {
        Role::Admin => match kind {
            K::Audit => action == Read,
            K::User => true,
            _ => CRUD.contains(&action),
        },
        Role::Operator => {
            (FLEET.contains(&kind) && CRUD.contains(&action))
                || ([K::Tenant, K::Certificate, K::Authority].contains(&kind) && action == Read)
        }
        Role::Viewer => {
            (FLEET.contains(&kind) || [K::Tenant, K::Certificate, K::Authority].contains(&kind))
                && action == Read
        }
        Role::Auditor => [K::Audit, K::Tenant, K::User].contains(&kind) && action == Read,
    }
}

fn expected(
    w: &World,
    p: &Principal,
    action: Action,
    kind: ResourceKind,
    tenant: TenantId,
    id: Option<uuid::Uuid>,
) -> Decision {
    if !w.is_self_or_ancestor(p.tenant_id(), tenant) {
        return Decision::NotFound;
    }
    let ok = match (p.subject, p.role) {
        (Subject::Device(d), _) => {
            id == Some(d.0)
                && ((kind == ResourceKind::Device && action == Action::Read)
                    || ([ResourceKind::Certificate, ResourceKind::DeviceKey].contains(&kind)
                        && action == Action::Create))
        }
        (Subject::User(u), Some(_)) if kind == ResourceKind::User && id == Some(u.0) => {
            matches!(
                action,
                Action::Read | Action::UpdateProfile | Action::RevokeSessions
            )
        }
        (_, Some(role)) => {
            let own_tenant_change =
                kind == ResourceKind::Tenant && tenant == p.tenant_id() && action != Action::Read;
            granted(role, kind, action) && !own_tenant_change
        }
        (_, None) => false,
    };
    if ok {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

fn arb_case() -> impl Strategy<Value = (usize, u8, Option<Role>, usize, usize, usize, bool)> {
    (
        0..5usize,
        0..3u8,
        proptest::option::weighted(0.9, proptest::sample::select(Role::ALL.to_vec())),
        0..Action::ALL.len(),
        0..ResourceKind::ALL.len(),
        0..5usize,
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn every_decision_follows_the_rules((pt, sk, role, a, k, rt, same_id) in arb_case()) {
        let w = World::new();
        let subject_id = uuid::Uuid::now_v7();
        let subject = match sk {
            0 => Subject::User(UserId(subject_id)),
            1 => Subject::ApiKey(ApiKeyId(subject_id)),
            _ => Subject::Device(DeviceId(subject_id)),
        };
        let role = if matches!(subject, Subject::Device(_)) { None } else { role };
        let p = Principal { subject, tenant: w.path(w.ids[pt]), role };
        let action = Action::ALL[a];
        let kind = ResourceKind::ALL[k];
        let id = if same_id { Some(subject_id) } else { Some(uuid::Uuid::now_v7()) };
        let rpath = w.path(w.ids[rt]);
        let got = authorize(&p, action, &Resource { kind, tenant: &rpath, id });
        prop_assert_eq!(got, expected(&w, &p, action, kind, w.ids[rt], id),
            "{:?} {:?} {:?} in tenant {} by {:?} from tenant {}", action, kind, id, rt, p.subject, pt);
    }
}

#[test]
fn sideways_and_upwards_are_not_found() {
    let w = World::new();
    let admin_a = Principal {
        subject: Subject::User(UserId::new()),
        tenant: w.path(w.ids[1]),
        role: Some(Role::Admin),
    };
    for t in [0, 2, 4] {
        let path = w.path(w.ids[t]);
        for kind in ResourceKind::ALL {
            assert_eq!(
                authorize(&admin_a, Action::Read, &Resource::new(kind, &path)),
                Decision::NotFound
            );
        }
    }
    let child = w.path(w.ids[3]);
    assert_eq!(
        authorize(
            &admin_a,
            Action::Delete,
            &Resource::new(ResourceKind::Device, &child)
        ),
        Decision::Allow
    );
}

#[test]
fn viewer_changes_nothing_and_operator_manages_no_users_or_keys() {
    let w = World::new();
    let t = w.path(w.ids[1]);
    for (role, kind) in [
        (Role::Viewer, ResourceKind::Device),
        (Role::Operator, ResourceKind::User),
        (Role::Operator, ResourceKind::ApiKey),
        (Role::Operator, ResourceKind::DeviceKey),
    ] {
        let p = Principal {
            subject: Subject::User(UserId::new()),
            tenant: t.clone(),
            role: Some(role),
        };
        for action in [Action::Create, Action::Update, Action::Delete] {
            assert_eq!(
                authorize(&p, action, &Resource::new(kind, &t)),
                Decision::Forbidden,
                "{role:?} {action:?} {kind:?}"
            );
        }
    }
}

#[test]
fn nobody_changes_their_own_role_or_deletes_themselves() {
    let w = World::new();
    let id = UserId::new();
    let t = w.path(w.ids[0]);
    let me = Principal {
        subject: Subject::User(id),
        tenant: t.clone(),
        role: Some(Role::Admin),
    };
    let r = Resource::with_id(ResourceKind::User, &t, id.0);
    assert_eq!(authorize(&me, Action::Update, &r), Decision::Forbidden);
    assert_eq!(authorize(&me, Action::Delete, &r), Decision::Forbidden);
    assert_eq!(authorize(&me, Action::UpdateProfile, &r), Decision::Allow);
}

#[test]
fn message_access_follows_connections_for_devices_and_roles_for_people() {
    let w = World::new();
    let (tenant, other) = (w.path(w.ids[1]), w.path(w.ids[2]));
    let channel = ChannelId::new();
    let device = DeviceId::new();
    let now = chrono::Utc::now();
    let conn = |publish, subscribe| crate::domain::Connection {
        tenant_id: w.ids[1],
        device_id: device,
        channel_id: channel,
        publish,
        subscribe,
        created_at: now,
        updated_at: now,
    };
    let dev = Principal {
        subject: Subject::Device(device),
        tenant: tenant.clone(),
        role: None,
    };
    use MessageAccess::*;
    let decide = |p: &Principal, a, t: &TenantPath, c: Option<&crate::domain::Connection>| {
        authorize_messages(p, a, t, channel, c)
    };
    assert_eq!(decide(&dev, Publish, &tenant, None), Decision::Forbidden);
    assert_eq!(
        decide(&dev, Publish, &tenant, Some(&conn(true, false))),
        Decision::Allow
    );
    assert_eq!(
        decide(&dev, Subscribe, &tenant, Some(&conn(true, false))),
        Decision::Forbidden
    );
    assert_eq!(
        decide(&dev, Subscribe, &tenant, Some(&conn(false, true))),
        Decision::Allow
    );
    // Another device's connection is not this device's.
    let mut theirs = conn(true, true);
    theirs.device_id = DeviceId::new();
    assert_eq!(
        decide(&dev, Publish, &tenant, Some(&theirs)),
        Decision::Forbidden
    );
    assert_eq!(
        decide(&dev, Publish, &other, Some(&conn(true, true))),
        Decision::NotFound
    );
    // A subtenant's channel is not a device's either, though its admins
    // above may see it.
    let below = w.path(w.ids[3]);
    assert_eq!(decide(&dev, Publish, &below, None), Decision::NotFound);
    for (role, publish, subscribe) in [
        (Role::Admin, true, true),
        (Role::Operator, true, true),
        (Role::Viewer, false, true),
        (Role::Auditor, false, false),
    ] {
        let p = Principal {
            subject: Subject::User(UserId::new()),
            tenant: tenant.clone(),
            role: Some(role),
        };
        assert_eq!(decide(&p, Publish, &tenant, None).is_allowed(), publish);
        assert_eq!(decide(&p, Subscribe, &tenant, None).is_allowed(), subscribe);
        assert_eq!(decide(&p, Subscribe, &other, None), Decision::NotFound);
    }
}
