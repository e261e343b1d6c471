//! The store against a real encrypted file in a temporary directory.

use std::path::Path;

use chrono::Utc;
use moat_core::audit::{AuditChain, AuditRecord, Break, Outcome, now_millis};
use moat_core::credential::RefreshToken;
use moat_core::page::ListQuery;
use moat_core::store::{AuditFilter, Change, ConnectionsOf, Store, StoreError};
use moat_core::*;

use super::SqliteStore;

const KEY: [u8; 32] = [7; 32];

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("moat.db"), &KEY, AuditChain::new([9; 32])).expect("opens")
}

fn tenant(name: &str, parent: Option<&Tenant>) -> Tenant {
    let id = TenantId::new();
    let now = now_millis();
    Tenant {
        id,
        parent_id: parent.map(|p| p.id),
        path: parent.map_or_else(|| TenantPath::root(id), |p| p.path.child(id)),
        name: name.into(),
        tags: vec![],
        metadata: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    }
}

fn device(t: &Tenant, name: &str, tags: &[&str]) -> Device {
    let now = now_millis();
    Device {
        id: DeviceId::new(),
        tenant_id: t.id,
        name: name.into(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        metadata: serde_json::json!({"k": 1}),
        state: DeviceState::Active,
        created_at: now,
        updated_at: now,
    }
}

fn user(t: &Tenant, username: &str) -> User {
    let now = now_millis();
    User {
        id: UserId::new(),
        tenant_id: t.id,
        username: username.into(),
        display_name: username.into(),
        role: Role::Operator,
        disabled: false,
        password_hash: "$argon2id$x".into(),
        sessions_valid_after: now,
        created_at: now,
        updated_at: now,
    }
}

fn record(action: &str, t: Option<&Tenant>) -> AuditRecord {
    let mut r = AuditRecord::new("system", action, "-", Outcome::Success);
    r.tenant_id = t.map(|t| t.id);
    r
}

#[tokio::test]
async fn entities_round_trip_and_lists_page_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let root = tenant("root", None);
    let child = tenant("child", Some(&root));
    s.apply(
        vec![
            Change::InsertTenant(root.clone()),
            Change::InsertTenant(child.clone()),
        ],
        Some(record("t", Some(&root))),
    )
    .await
    .unwrap();
    assert_eq!(s.tenant(child.id).await.unwrap(), Some(child.clone()));
    assert_eq!(
        s.tenants(None, &ListQuery::first(10)).await.unwrap().items,
        vec![root.clone()]
    );
    assert_eq!(
        s.tenants(Some(root.id), &ListQuery::first(10))
            .await
            .unwrap()
            .items,
        vec![child.clone()]
    );

    let devices: Vec<Device> = (0..5)
        .map(|i| {
            device(
                &root,
                &format!("Sensor-{i}"),
                if i % 2 == 0 { &["even"] } else { &["odd"] },
            )
        })
        .collect();
    s.apply(
        devices.iter().cloned().map(Change::InsertDevice).collect(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.device(devices[3].id).await.unwrap(),
        Some(devices[3].clone())
    );

    let mut q = ListQuery::first(2);
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let p = s.devices(root.id, None, &q).await.unwrap();
        pages += 1;
        names.extend(p.items.iter().map(|d| d.name.clone()));
        match p.next_cursor {
            Some(c) => q.after = Some(c.parse().unwrap()),
            None => break,
        }
    }
    assert_eq!((pages, names.len()), (3, 5));
    let even = ListQuery {
        tag: Some("even".into()),
        ..ListQuery::first(10)
    };
    assert_eq!(
        s.devices(root.id, None, &even).await.unwrap().items.len(),
        3
    );
    let named = ListQuery {
        name: Some("sensor-1".into()),
        ..ListQuery::first(10)
    };
    assert_eq!(
        s.devices(root.id, None, &named).await.unwrap().items[0].id,
        devices[1].id
    );
    assert!(
        s.devices(child.id, None, &ListQuery::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        s.devices(root.id, Some(DeviceState::Revoked), &ListQuery::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let u = user(&root, "alice");
    let now = now_millis();
    let ch = Channel {
        id: ChannelId::new(),
        tenant_id: root.id,
        name: "c".into(),
        tags: vec![],
        metadata: serde_json::json!({}),
        payload_policy: PayloadPolicy::Json,
        retention_days: Some(7),
        max_payload: Some(4096),
        created_at: now,
        updated_at: now,
    };
    let conn = moat_core::Connection {
        tenant_id: root.id,
        device_id: devices[0].id,
        channel_id: ch.id,
        publish: true,
        subscribe: false,
        created_at: now,
        updated_at: now,
    };
    s.apply(
        vec![
            Change::InsertUser(u.clone()),
            Change::InsertChannel(ch.clone()),
            Change::PutConnection(conn.clone()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.user_by_username("alice").await.unwrap(), Some(u));
    assert_eq!(s.channel(ch.id).await.unwrap(), Some(ch.clone()));
    assert_eq!(
        s.connection(ch.id, devices[0].id).await.unwrap(),
        Some(conn.clone())
    );
    assert_eq!(
        s.connections(ConnectionsOf::Device(devices[0].id), &ListQuery::first(10))
            .await
            .unwrap()
            .items,
        vec![conn]
    );
    // Deleting the device takes its connections with it.
    s.apply(vec![Change::DeleteDevice(devices[0].id)], None)
        .await
        .unwrap();
    assert!(
        s.connections(ConnectionsOf::Channel(ch.id), &ListQuery::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn conflicts_and_missing_rows_are_reported_and_a_failed_batch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = tenant("a", None);
    let b = tenant("b", None);
    s.apply(
        vec![
            Change::InsertTenant(a.clone()),
            Change::InsertTenant(b.clone()),
        ],
        None,
    )
    .await
    .unwrap();
    s.apply(vec![Change::InsertUser(user(&a, "alice"))], None)
        .await
        .unwrap();
    assert!(
        matches!(s.apply(vec![Change::InsertUser(user(&b, "alice"))], None).await, Err(StoreError::Conflict(m)) if m.contains("taken"))
    );
    s.apply(vec![Change::InsertDevice(device(&a, "d", &[]))], None)
        .await
        .unwrap();
    s.apply(vec![Change::InsertDevice(device(&b, "d", &[]))], None)
        .await
        .expect("the same name in another tenant");

    let first = device(&a, "fresh", &[]);
    let twin = device(&a, "d", &[]);
    let r = s
        .apply(
            vec![
                Change::InsertDevice(first.clone()),
                Change::InsertDevice(twin),
            ],
            Some(record("batch", Some(&a))),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))));
    assert_eq!(
        s.device(first.id).await.unwrap(),
        None,
        "the batch rolled back"
    );
    assert!(
        s.audit_events(&AuditFilter {
            action: Some("batch".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );

    assert!(matches!(
        s.apply(vec![Change::UpdateDevice(device(&a, "ghost", &[]))], None)
            .await,
        Err(StoreError::NotFound("device"))
    ));
    assert!(
        matches!(s.apply(vec![Change::DeleteTenant(a.id)], None).await, Err(StoreError::Conflict(m)) if m.contains("not empty"))
    );

    let u = s.user_by_username("alice").await.unwrap().unwrap();
    let rt = RefreshToken {
        id: RefreshTokenId::new(),
        user_id: u.id,
        family_id: RefreshTokenId::new(),
        secret_hash: "h".into(),
        created_at: now_millis(),
        expires_at: now_millis(),
        used_at: None,
        revoked_at: None,
    };
    s.apply(vec![Change::InsertRefreshToken(rt.clone())], None)
        .await
        .unwrap();
    s.apply(
        vec![Change::UseRefreshToken {
            id: rt.id,
            at: Utc::now(),
        }],
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.apply(
            vec![Change::UseRefreshToken {
                id: rt.id,
                at: Utc::now()
            }],
            None
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn the_file_is_encrypted_survives_reopening_and_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("t", None);
    let d = device(&t, "secret-boiler-4711", &[]);
    {
        let s = open(dir.path());
        s.apply(
            vec![
                Change::InsertTenant(t.clone()),
                Change::InsertDevice(d.clone()),
            ],
            None,
        )
        .await
        .unwrap();
    }
    for name in ["moat.db", "moat.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            assert!(!bytes.starts_with(b"SQLite format 3"));
            assert!(
                !bytes.windows(18).any(|w| w == b"secret-boiler-4711"),
                "{name} leaks the name"
            );
        }
    }
    assert_eq!(open(dir.path()).device(d.id).await.unwrap(), Some(d));
    let wrong = SqliteStore::open(
        &dir.path().join("moat.db"),
        &[8; 32],
        AuditChain::new([9; 32]),
    );
    assert!(matches!(wrong, Err(StoreError::WrongKey)));
}

fn raw(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("moat.db")).unwrap();
    c.pragma_update(None, "key", format!("x'{}'", hex::encode(KEY)))
        .unwrap();
    c.pragma_update(None, "cipher_hmac_algorithm", crate::PAGE_HMAC_ALGORITHM)
        .unwrap();
    c
}

/// A raw connection with SQLCipher's defaults, and whether it reads.
fn reads_with_defaults(path: &Path, key: &[u8; 32]) -> bool {
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "key", format!("x'{}'", hex::encode(key)))
        .unwrap();
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok()
}

#[test]
fn new_files_use_the_chosen_page_hmac_and_older_files_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
    // A file Moat creates: HMAC-SHA256, which SQLCipher's defaults cannot read.
    let new = dir.path().join("new.db");
    let c = crate::connect(&new, &KEY, flags).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    assert!(!reads_with_defaults(&new, &KEY));
    let c = crate::connect(&new, &KEY, flags).unwrap();
    assert_eq!(
        c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
    drop(c);
    // A file made with SQLCipher's defaults (HMAC-SHA512), as Moat made them
    // before: still opens, and stays as it is.
    let old = dir.path().join("old.db");
    let c = rusqlite::Connection::open(&old).unwrap();
    c.pragma_update(None, "key", format!("x'{}'", hex::encode(KEY)))
        .unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (2);")
        .unwrap();
    drop(c);
    let c = crate::connect(&old, &KEY, flags).unwrap();
    c.execute_batch("INSERT INTO t VALUES (3);").unwrap();
    assert_eq!(
        c.query_row("SELECT sum(x) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        5
    );
    drop(c);
    assert!(reads_with_defaults(&old, &KEY));
    // A wrong key opens neither.
    for path in [&new, &old] {
        assert!(matches!(
            crate::connect(path, &[8; 32], flags),
            Err(StoreError::WrongKey)
        ));
    }
}

#[tokio::test]
async fn audit_filters_and_verification_find_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let root = tenant("root", None);
    let a = tenant("a", Some(&root));
    let b = tenant("b", Some(&root));
    s.apply(
        vec![
            Change::InsertTenant(root.clone()),
            Change::InsertTenant(a.clone()),
            Change::InsertTenant(b.clone()),
        ],
        None,
    )
    .await
    .unwrap();
    for i in 0..10 {
        let t = if i % 2 == 0 { &a } else { &b };
        let mut r = record(if i < 5 { "device.create" } else { "auth.login" }, Some(t));
        r.outcome = if i == 9 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        s.append_audit(r).await.unwrap();
    }
    let f = |filter: AuditFilter| {
        let s = &s;
        async move {
            s.audit_events(&AuditFilter {
                limit: 100,
                ..filter
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(f(AuditFilter::default()).await.len(), 10);
    let of_a = f(AuditFilter {
        tenant: Some(a.path.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(of_a.len(), 5);
    assert!(of_a.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    assert_eq!(
        f(AuditFilter {
            tenant: Some(root.path.clone()),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    assert_eq!(
        f(AuditFilter {
            action: Some("auth.".into()),
            ..Default::default()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        f(AuditFilter {
            action: Some("auth".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );
    assert_eq!(
        f(AuditFilter {
            outcome: Some(Outcome::Failure),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        f(AuditFilter {
            before_seq: Some(4),
            ..Default::default()
        })
        .await
        .len(),
        3
    );

    let report = s.verify_audit().await.unwrap();
    assert_eq!((report.checked, report.broken.clone()), (10, None));

    let c = raw(dir.path());
    assert!(
        c.execute("UPDATE audit SET actor = 'x' WHERE seq = 4", [])
            .is_err(),
        "append-only"
    );
    assert!(
        c.execute("DELETE FROM audit WHERE seq = 4", []).is_err(),
        "append-only"
    );
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; UPDATE audit SET actor = 'user:mallory' WHERE seq = 4;").unwrap();
    assert_eq!(
        s.verify_audit().await.unwrap().broken,
        Some(Break::Altered { seq: 4 })
    );
    c.execute_batch("DELETE FROM audit WHERE seq IN (3, 4)")
        .unwrap();
    let r = s.verify_audit().await.unwrap();
    assert_eq!(
        r.broken,
        Some(Break::Missing {
            expected: 3,
            found: 5
        })
    );
    assert_eq!((r.checked, r.head_seq), (2, 2));
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    raw(dir.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let r = SqliteStore::open(&dir.path().join("moat.db"), &KEY, AuditChain::new([9; 32]));
    assert!(matches!(r, Err(StoreError::SchemaTooNew { found: 99, .. })));
}

#[tokio::test]
async fn an_action_prefix_filter_holds_for_non_ascii_actions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for action in [
        "clé.créée",
        "clé.révoquée",
        "clé",
        "clé/x",
        "cléf.créée",
        "appareil.créé",
        "appareil",
    ] {
        s.append_audit(record(action, None)).await.unwrap();
    }
    let check = |prefix: &'static str, expected: &'static [&'static str]| {
        let s = &s;
        async move {
            let found = s
                .audit_events(&AuditFilter {
                    action: Some(prefix.into()),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut found: Vec<String> = found.into_iter().map(|e| e.record.action).collect();
            found.sort();
            assert_eq!(found, expected, "action={prefix}");
        }
    };
    check("clé.", &["clé.créée", "clé.révoquée"]).await;
    check("appareil.", &["appareil.créé"]).await;
    check("cl.", &[]).await;
    check("clé.créée", &["clé.créée"]).await;
}

#[tokio::test]
async fn claiming_moves_a_device_and_spends_its_code_once() {
    use moat_core::credential::DeviceKey;
    use moat_core::pki::ClaimCode;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let pool = tenant("pool", None);
    let customer = tenant("customer", None);
    let d = device(&pool, "kit-1", &[]);
    let other = device(&customer, "kit-1", &[]);
    let now = now_millis();
    let code = ClaimCode {
        id: ClaimCodeId::new(),
        tenant_id: pool.id,
        device_id: d.id,
        created_at: now,
        expires_at: now + chrono::Duration::days(30),
        claimed_at: None,
        claimed_by: None,
        used_at: None,
        code_hash: "h1".into(),
    };
    let key = DeviceKey {
        id: DeviceKeyId::new(),
        tenant_id: pool.id,
        device_id: d.id,
        created_at: now,
        expires_at: Some(now + chrono::Duration::days(3)),
        revoked_at: None,
        secret_hash: "k".into(),
        psk_sealed: Some(vec![1, 2, 3]),
    };
    s.apply(
        vec![
            Change::InsertTenant(pool.clone()),
            Change::InsertTenant(customer.clone()),
            Change::InsertDevice(d.clone()),
            Change::InsertDeviceKey(key.clone()),
            Change::InsertClaimCode(code.clone()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.claim_code_by_hash("h1").await.unwrap(),
        Some(code.clone())
    );
    let listed = s.claim_codes(pool.id, &ListQuery::first(10)).await.unwrap();
    assert_eq!(listed.items, vec![code.clone()]);
    assert!(
        s.claim_codes(customer.id, &ListQuery::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Keys due within a week in the pool's subtree, none in the customer's.
    let week = now + chrono::Duration::days(7);
    let due = s
        .expiring_device_keys(&pool.path, now, week, 10)
        .await
        .unwrap();
    assert_eq!(due, vec![key.clone()]);

    // A name taken in the target tenant stops the move, and nothing of it
    // happens.
    s.apply(vec![Change::InsertDevice(other.clone())], None)
        .await
        .unwrap();
    let claim = |by: &str| Change::ClaimWithCode {
        id: code.id,
        by: by.into(),
        at: now,
    };
    let moved = Change::MoveDevice {
        id: d.id,
        tenant_id: customer.id,
        state: DeviceState::Active,
        at: now,
    };
    let err = s
        .apply(vec![claim("user:a"), moved.clone()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        s.claim_code_by_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .claimed_at,
        None
    );
    s.apply(vec![Change::DeleteDevice(other.id)], None)
        .await
        .unwrap();
    s.apply(vec![claim("user:a"), moved], None).await.unwrap();
    let got = s.device(d.id).await.unwrap().unwrap();
    assert_eq!(
        (got.tenant_id, got.state),
        (customer.id, DeviceState::Active)
    );
    let moved_key = s.device_key(key.id).await.unwrap().unwrap();
    assert_eq!(
        moved_key.tenant_id, customer.id,
        "the device's keys move with it"
    );
    assert_eq!(
        moved_key.psk_sealed,
        Some(vec![1, 2, 3]),
        "the sealed DTLS secret is kept"
    );
    assert_eq!(
        s.devices_named(customer.id, &["kit-1".into(), "none".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    // Claimed once, spent once.
    assert!(matches!(
        s.apply(vec![claim("user:b")], None).await,
        Err(StoreError::Conflict(_))
    ));
    let spend = Change::UseClaimCode {
        id: code.id,
        at: now,
    };
    s.apply(vec![spend.clone()], None).await.unwrap();
    assert!(matches!(
        s.apply(vec![spend], None).await,
        Err(StoreError::Conflict(_))
    ));
}
