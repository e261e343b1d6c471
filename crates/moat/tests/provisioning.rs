//! Provisioning end to end: factory batches imported through the API (JSON
//! and CSV, dry runs, per-row errors, nothing half-imported, idempotent
//! re-runs), claiming in the field with one-time codes and the bootstrap
//! endpoint (throttled, audited), and device keys rotated by an admin.

mod common;

use std::time::Duration;

use common::device::{OwnCa, openssl_csr, whoami_with_cert};
use common::{Api, Server, user_in};
use serde_json::{Value, json};

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

async fn device_count(api: &Api) -> usize {
    api.get("/devices?limit=500").await.body["items"]
        .as_array()
        .unwrap()
        .len()
}

/// Sends a CSV body to the import endpoint.
async fn import_csv(api: &Api, csv: &str, dry_run: bool) -> (u16, Value) {
    let r = api
        .client
        .post(format!("{}/devices/import?dry_run={dry_run}", api.base))
        .header("authorization", api.auth.clone().unwrap())
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_factory_batch_imports_all_or_nothing_and_re_runs_safely() {
    let server = Server::start();
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let factory = OwnCa::new("ACME factory CA");
    factory.register(&api, "off").await;
    let before = device_count(&api).await;

    // The factory's batch: a certificate it signed, a CSR, a bare device.
    let (cert_a, key_a) = factory.sign("meter-a", 0, 365);
    let (key_b, csr_b) = openssl_csr(dir.path(), "meter-b");
    let good = json!({"devices": [
        {"name": "meter-a", "tags": ["line-1"], "certificate": cert_a},
        {"name": "meter-b", "csr": csr_b},
        {"name": "meter-c", "metadata": {"batch": 7}},
    ]});

    // A batch with bad rows stores nothing and names every bad row.
    let (stranger, _) = OwnCa::new("stranger").sign("x", 0, 1);
    let mut bad = good.clone();
    let rows = bad["devices"].as_array_mut().unwrap();
    rows.push(json!({"name": "meter-d", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"}));
    rows.push(json!({"name": "meter-a"}));
    rows.push(json!({"name": "meter-f", "certificate": stranger}));
    rows.push(json!({"name": "meter-g", "csr": csr_b}));
    let refused = api.post("/devices/import", bad).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(
        refused.headers["content-type"], "application/problem+json",
        "{refused:?}"
    );
    let fields: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "rows[4].csr",
            "rows[5].name",
            "rows[6].certificate",
            "rows[7]"
        ],
        "{refused:?}"
    );
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("4 of 7 rows are invalid"),
        "{refused:?}"
    );
    assert_eq!(device_count(&api).await, before, "nothing half-imported");

    // A dry run checks and stores nothing.
    let dry = api.post("/devices/import?dry_run=true", good.clone()).await;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["dry_run"], true);
    assert_eq!(dry.body["created"], 3);
    assert_eq!(dry.body["results"][0]["status"], "would_create");
    assert_eq!(device_count(&api).await, before);

    // The real run: three devices, one certificate imported, one issued.
    let done = api.post("/devices/import", good.clone()).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        (
            &done.body["created"],
            &done.body["certificates_issued"],
            &done.body["unchanged"]
        ),
        (&json!(3), &json!(2), &json!(0)),
        "{done:?}"
    );
    assert_eq!(device_count(&api).await, before + 3);
    let issued_b = done.body["results"][1]["certificate_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        done.body["results"][0].get("certificate_pem").is_none(),
        "an imported certificate is the factory's to install"
    );

    // Both devices authenticate by certificate alone.
    let (status, me) = whoami_with_cert(&server, &cert_a, &key_a).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"]["id"], done.body["results"][0]["device_id"]);
    let (status, me) = whoami_with_cert(&server, &issued_b, &key_b).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"]["id"], done.body["results"][1]["device_id"]);
    let listed = api
        .get(&format!(
            "/devices/{}/certificates",
            done.body["results"][0]["device_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed.body[0]["origin"], "imported", "{listed:?}");

    // Re-running the same batch changes nothing and gives back the same
    // certificate for the CSR row.
    let again = api.post("/devices/import", good.clone()).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["unchanged"], 3, "{again:?}");
    assert_eq!(again.body["certificates_issued"], 0);
    assert_eq!(again.body["results"][1]["certificate_pem"], issued_b);
    assert_eq!(device_count(&api).await, before + 3);

    // A row that contradicts what exists is an error, not an overwrite.
    let changed = api
        .post(
            "/devices/import",
            json!({"devices": [{"name": "meter-c", "tags": ["moved"]}]}),
        )
        .await;
    assert_eq!(changed.status, 422, "{changed:?}");

    // The import is one audit event.
    let audit = api.get("/audit?action=device.import").await;
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(audit.body["items"][0]["detail"]["created"], 3);
}

#[tokio::test]
async fn csv_batches_with_quoted_pems_and_row_numbered_errors() {
    let server = Server::start();
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, csr) = openssl_csr(dir.path(), "pump");
    let csv = format!("name,tags,csr\npump-1,site-a;floor-2,\"{csr}\"\npump-2,,\n,no-name,\n");
    let (status, body) = import_csv(&api, &csv, false).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "rows[3].name", "{body}");

    let csv = csv.replace("\n,no-name,\n", "\n");
    let (status, body) = import_csv(&api, &csv, true).await;
    assert_eq!((status, &body["created"]), (200, &json!(2)), "{body}");
    let (status, body) = import_csv(&api, &csv, false).await;
    assert_eq!((status, &body["created"]), (200, &json!(2)), "{body}");
    let pump = api.get("/devices?name=pump-1").await;
    assert_eq!(
        pump.body["items"][0]["tags"],
        json!(["site-a", "floor-2"]),
        "{pump:?}"
    );
    let (status, body) = import_csv(&api, &csv, false).await;
    assert_eq!((status, &body["unchanged"]), (200, &json!(2)), "{body}");

    // Not CSV or JSON: 415. Too many rows: 422.
    let r = api
        .client
        .post(format!("{}/devices/import", api.base))
        .header("authorization", api.auth.clone().unwrap())
        .header("content-type", "application/xml")
        .body("<devices/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("d{i}")}))
        .collect();
    let r = api
        .post("/devices/import", json!({ "devices": many }))
        .await;
    assert_eq!(r.status, 422, "{r:?}");

    // A viewer may not import.
    let tenant = api.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = user_in(&server, &api, &tenant, "vera", "viewer").await;
    assert_eq!(import_csv(&viewer, "name\nx\n", false).await.0, 403);
}

#[tokio::test]
async fn a_claimed_device_bootstraps_once_with_its_code() {
    let server = Server::start();
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();

    // The provider's admin makes codes; devices wait pending in its tenant.
    let made = api
        .post("/claim-codes", json!({"count": 2, "name_prefix": "kit"}))
        .await;
    assert_eq!(made.status, 201, "{made:?}");
    let code = made.body["codes"][0]["code"].as_str().unwrap().to_owned();
    let other_code = made.body["codes"][1]["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 14);
    let device_id = made.body["codes"][0]["device"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.body["codes"][0]["device"]["state"], "pending");
    let listed = api.get("/claim-codes").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
    assert!(
        !listed.body.to_string().contains(&code),
        "codes are shown once"
    );

    // Before it is claimed, the device cannot bootstrap.
    let anon = Api::anonymous(&server);
    let (key, csr) = openssl_csr(dir.path(), "kit");
    let early = anon
        .post("/bootstrap", json!({"code": code, "csr": csr}))
        .await;
    assert_eq!(early.status, 403, "{early:?}");

    // A customer's operator claims it into their tenant, typing the code
    // in lower case without dashes.
    let customer = api.create("/tenants", json!({"name": "customer"})).await;
    let operator = user_in(&server, &api, &customer, "olga", "operator").await;
    let typed = code.replace('-', "").to_lowercase();
    let claimed = operator
        .post("/claims", json!({"code": typed, "name": "boiler-room"}))
        .await;
    assert_eq!(claimed.status, 200, "{claimed:?}");
    assert_eq!(claimed.body["tenant_id"], customer);
    assert_eq!(claimed.body["state"], "active");
    assert_eq!(claimed.body["name"], "boiler-room");
    assert_eq!(
        operator.get(&format!("/devices/{device_id}")).await.status,
        200
    );
    // A code claims once.
    let twice = operator.post("/claims", json!({"code": code})).await;
    assert_eq!(twice.status, 404, "{twice:?}");

    // The device fetches its certificate once, from the customer's CA.
    let boot = anon
        .post("/bootstrap", json!({"code": code, "csr": csr}))
        .await;
    assert_eq!(boot.status, 201, "{boot:?}");
    let chain = boot.body["chain_pem"].as_str().unwrap();
    let (status, me) = whoami_with_cert(&server, chain, &key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"]["id"], device_id);
    assert_eq!(me["tenant_id"], customer);
    let again = anon
        .post("/bootstrap", json!({"code": code, "csr": csr}))
        .await;
    assert_eq!(again.status, 401, "single use: {again:?}");

    // Wrong codes are audited and, from one source, soon throttled (the two
    // spent-code attempts above counted too); the good code is refused as
    // well while the source is blocked.
    let guess = |i: usize| {
        let anon = &anon;
        async move {
            anon.post("/bootstrap", json!({"code": format!("{i:04}-0000-0000")}))
                .await
                .status
        }
    };
    for i in 0..18 {
        assert_eq!(guess(i).await, 401);
    }
    let audit = api.get("/audit?action=auth.claim_code&limit=100").await;
    assert_eq!(
        audit.body["items"].as_array().unwrap().len(),
        19,
        "{audit:?}"
    );
    let mut statuses = Vec::new();
    for i in 18..24 {
        statuses.push(guess(i).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Every request from the blocked source waits, even a good code.
    let blocked = operator.post("/claims", json!({"code": other_code})).await;
    assert_eq!(blocked.status, 429, "{blocked:?}");
}

#[tokio::test]
async fn an_admin_rotates_a_device_key_with_an_overlap() {
    let mut opts = common::Options::default();
    opts.env.push(("MOAT_ROTATION_OVERLAP".into(), "2s".into()));
    let server = Server::start_with(opts);
    let api = admin(&server).await;
    let device = api.create("/devices", json!({"name": "gate"})).await;
    let old = api
        .post(
            &format!("/devices/{device}/keys"),
            json!({"expires_in_days": 5}),
        )
        .await;
    assert_eq!(old.status, 201);
    let old_id = old.body["key"]["id"].as_str().unwrap().to_owned();
    let old_token = old.body["token"].as_str().unwrap().to_owned();

    // Due within a week: listed with the certificates.
    let due = api.get("/pki/expiring?days=7").await;
    assert_eq!(due.body[0]["kind"], "device_key", "{due:?}");
    assert_eq!(due.body[0]["id"], old_id.as_str());

    let new = api
        .post(
            &format!("/devices/{device}/keys"),
            json!({"replaces": old_id}),
        )
        .await;
    assert_eq!(new.status, 201, "{new:?}");
    let new_token = new.body["token"].as_str().unwrap().to_owned();
    let whoami = |t: String| {
        let server = &server;
        async move { Api::device(server, &t).get("/auth/whoami").await.status }
    };
    assert_eq!(whoami(old_token.clone()).await, 200, "overlap");
    assert_eq!(whoami(new_token.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(whoami(old_token).await, 401, "the old key expired");
    assert_eq!(whoami(new_token).await, 200);

    let bad = api
        .post(
            &format!("/devices/{device}/keys"),
            json!({"replaces": old_id}),
        )
        .await;
    assert_eq!(bad.status, 422, "an expired key is not replaced: {bad:?}");
}
