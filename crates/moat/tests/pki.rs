//! Device identity end to end, with the `openssl` CLI and rustls clients as
//! the peers: CSR signing, generated keys and PKCS#12, client-certificate
//! authentication, revocation cutting a live connection, CRLs, refused
//! certificates (each audited), a tenant's own CA with just-in-time
//! registration, self-renewal, and the server certificate renewed in place.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::device::{
    OwnCa, device_client, moat_pki_provider, openssl, openssl_csr, whoami_with_cert,
};
use common::{Api, Server};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

/// The reasons of refused client certificates in the audit log, once every
/// one of `expected` is there (the server audits after the handshake fails,
/// so the client may see the failure first); panics after 5 seconds.
async fn audit_reasons(api: &Api, expected: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = api
            .get("/audit?action=auth.client_certificate&limit=500")
            .await;
        let reasons: Vec<String> = events.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["detail"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        if expected
            .iter()
            .all(|x| reasons.iter().any(|r| r.starts_with(x)))
        {
            return reasons;
        }
        assert!(
            Instant::now() < deadline,
            "audit events for {expected:?} missing: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn csr_signing_client_auth_and_revocation_cutting_a_live_connection() {
    let server = Server::start();
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let device = api.create("/devices", json!({"name": "meter-1"})).await;

    // The device keeps its key: openssl makes the key and the CSR.
    let (key, csr) = openssl_csr(dir.path(), "meter");
    let issued = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"csr": csr}),
        )
        .await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    assert!(
        issued.body.get("private_key_pem").is_none(),
        "a CSR's key never leaves the device"
    );
    let chain = issued.body["chain_pem"].as_str().unwrap().to_owned();
    let cert_id = issued.body["certificate"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(issued.body["certificate"]["key_algorithm"], "ecdsa-p256");

    // openssl verifies the chain to the root CA the server published.
    std::fs::write(dir.path().join("chain.pem"), &chain).unwrap();
    std::fs::write(
        dir.path().join("cert.pem"),
        issued.body["certificate_pem"].as_str().unwrap(),
    )
    .unwrap();
    let text = openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            "cert.pem",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    );
    assert!(
        text.contains(&device)
            && text.contains(&format!("URI:urn:uuid:{device}"))
            && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    let ca_pem = server.ca_path();
    openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            ca_pem.to_str().unwrap(),
            "-untrusted",
            "chain.pem",
            "-purpose",
            "sslclient",
            "cert.pem",
        ],
    );

    // The certificate alone authenticates the device over HTTPS.
    let (status, me) = whoami_with_cert(&server, &chain, &key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["subject"]["kind"].as_str(), me["subject"]["id"].as_str()),
        (Some("device"), Some(device.as_str()))
    );

    // A live connection (openssl s_client) is cut within a second of revocation.
    let mut s_client = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            server.url.trim_start_matches("https://"),
            "-CAfile",
            ca_pem.to_str().unwrap(),
            "-cert",
            "chain.pem",
            "-key",
            "meter.key",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = s_client.stdin.take().unwrap();
    let mut stdout = s_client.stdout.take().unwrap();
    stdin
        .write_all(b"GET /api/v1/auth/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let started = Instant::now();
    let revoked = api
        .post(
            &format!("/devices/{device}/certificates/{cert_id}/revoke"),
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    let eof = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the connection was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cut after {:?}",
        started.elapsed()
    );

    // Reconnecting with the revoked certificate fails, and is audited.
    assert_eq!(whoami_with_cert(&server, &chain, &key).await.0, 0);
    audit_reasons(&api, &["revoked"]).await;

    // The CA's CRL (DER, signed by the CA) lists the serial.
    let cas = api.get("/pki/cas").await;
    let ca = &cas.body.as_array().unwrap()[0];
    std::fs::write(
        dir.path().join("tenant-ca.pem"),
        ca["cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    let crl = server
        .client()
        .get(server.api(&format!("/pki/cas/{}/crl", ca["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(crl.headers()["content-type"], "application/pkix-crl");
    std::fs::write(dir.path().join("ca.crl"), crl.bytes().await.unwrap()).unwrap();
    let listed = openssl(
        dir.path(),
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "ca.crl",
            "-CAfile",
            "tenant-ca.pem",
            "-noout",
            "-text",
        ],
    );
    let serial = issued.body["certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_uppercase();
    assert!(
        listed.contains(&serial) && listed.contains("Key Compromise"),
        "{listed}"
    );
    drop(stdin);
}

#[tokio::test]
async fn weak_keys_are_refused_and_generated_keys_come_as_pem_or_pkcs12() {
    let server = Server::start();
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let device = api.create("/devices", json!({"name": "tag-7"})).await;

    openssl(
        dir.path(),
        &[
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out",
            "weak.csr", "-subj", "/CN=w",
        ],
    );
    let weak = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"csr": std::fs::read_to_string(dir.path().join("weak.csr")).unwrap()}),
        )
        .await;
    assert_eq!(weak.status, 422);
    assert!(
        weak.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1024"),
        "{:?}",
        weak.body
    );
    let garbage = api.post(&format!("/devices/{device}/certificates"), json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})).await;
    assert_eq!(garbage.status, 422);
    openssl(
        dir.path(),
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ok.key", "-out", "ok.csr",
            "-subj", "/CN=r",
        ],
    );
    let rsa = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"csr": std::fs::read_to_string(dir.path().join("ok.csr")).unwrap()}),
        )
        .await;
    assert_eq!(rsa.status, 201);
    assert_eq!(rsa.body["certificate"]["key_algorithm"], "rsa-2048");
    let (status, _) = whoami_with_cert(
        &server,
        rsa.body["chain_pem"].as_str().unwrap(),
        &std::fs::read_to_string(dir.path().join("ok.key")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "an RSA device authenticates");

    // A generated Ed25519 key, as PEM.
    let pem = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"key_algorithm": "ed25519", "validity_days": 5}),
        )
        .await;
    assert_eq!(pem.status, 201);
    let (status, _) = whoami_with_cert(
        &server,
        pem.body["chain_pem"].as_str().unwrap(),
        pem.body["private_key_pem"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // As PKCS#12, which openssl opens with the password.
    let p12 = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"format": "pkcs12", "pkcs12_password": "factory-secret"}),
        )
        .await;
    assert_eq!(p12.status, 201);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(p12.body["pkcs12_base64"].as_str().unwrap())
        .unwrap();
    std::fs::write(dir.path().join("d.p12"), bytes).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "pkcs12",
            "-in",
            "d.p12",
            "-passin",
            "pass:factory-secret",
            "-nodes",
        ],
    );
    assert!(
        out.contains("PRIVATE KEY") && out.matches("BEGIN CERTIFICATE").count() == 2,
        "{out}"
    );

    // What is due: the 5-day certificate within 10 days, nothing within 1.
    let due = api.get("/pki/expiring?days=10").await;
    assert_eq!(due.body.as_array().unwrap().len(), 1, "{:?}", due.body);
    assert_eq!(
        api.get("/pki/expiring?days=1")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Quarantine refuses the certificates; releasing admits them again.
    let (chain, key) = (
        pem.body["chain_pem"].as_str().unwrap(),
        pem.body["private_key_pem"].as_str().unwrap(),
    );
    assert_eq!(
        api.patch(
            &format!("/devices/{device}"),
            json!({"state": "quarantined"})
        )
        .await
        .status,
        200
    );
    assert_eq!(whoami_with_cert(&server, chain, key).await.0, 0);
    audit_reasons(&api, &["the device is quarantined"]).await;
    assert_eq!(
        api.patch(&format!("/devices/{device}"), json!({"state": "active"}))
            .await
            .status,
        200
    );
    assert_eq!(whoami_with_cert(&server, chain, key).await.0, 200);
}

/// A tenant's own CA, made here with rcgen, as a factory would have one.
#[tokio::test]
async fn own_ca_with_proof_of_possession_just_in_time_registration_and_refusals() {
    let server = Server::start();
    let api = admin(&server).await;
    let factory = OwnCa::new("ACME factory CA");

    // Proof of possession: a verification certificate over the code.
    let code = api.post("/pki/cas/registration-code", json!({})).await;
    assert_eq!(code.status, 201);
    let code = code.body["code"].as_str().unwrap().to_owned();
    let (wrong_proof, _) = OwnCa::new("impostor").sign(&code, 0, 1);
    let refused = api.post("/pki/cas", json!({"certificate_pem": factory.cert.pem(), "verification_certificate_pem": wrong_proof, "jit": "pending"})).await;
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    let (proof, _) = factory.sign(&code, 0, 1);
    let registered = api.post("/pki/cas", json!({"certificate_pem": factory.cert.pem(), "verification_certificate_pem": proof, "jit": "pending"})).await;
    assert_eq!(registered.status, 201, "{:?}", registered.body);
    let ca_id = registered.body["id"].as_str().unwrap().to_owned();

    // First connection of an unknown device: registered pending, not let in.
    let (chain, key) = factory.sign("sensor-0042", 0, 30);
    assert_eq!(
        whoami_with_cert(&server, &chain, &key).await.0,
        401,
        "a pending device may not act"
    );
    let listed = api.get("/devices?name=sensor-0042").await;
    let dev = &listed.body["items"][0];
    assert_eq!(dev["state"], "pending", "{:?}", listed.body);
    // An operator's approval lets it in.
    assert_eq!(
        api.patch(
            &format!("/devices/{}", dev["id"].as_str().unwrap()),
            json!({"state": "active"})
        )
        .await
        .status,
        200
    );
    let (status, me) = whoami_with_cert(&server, &chain, &key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"]["id"], dev["id"]);

    // Refusals, each with a TLS alert and an audit event.
    let (expired, expired_key) = factory.sign("old", -30, -1);
    let (future, future_key) = factory.sign("future", 10, 20);
    let (stranger, stranger_key) = OwnCa::new("stranger").sign("x", 0, 1);
    let self_signed = rcgen::generate_simple_self_signed(vec!["self".into()]).unwrap();
    let (other_chain, other_key) = factory.sign("sensor-0043", 0, 30);
    for (chain, key) in [
        (expired.as_str(), expired_key.as_str()),
        (future.as_str(), future_key.as_str()),
        (stranger.as_str(), stranger_key.as_str()),
        (
            &self_signed.cert.pem(),
            &self_signed.signing_key.serialize_pem(),
        ),
        (chain.as_str(), other_key.as_str()), // the right certificate, the wrong key
    ] {
        assert_eq!(whoami_with_cert(&server, chain, key).await.0, 0);
    }
    // With just-in-time registration off, an unknown certificate is not a device.
    assert_eq!(
        api.patch(&format!("/pki/cas/{ca_id}"), json!({"jit": "off"}))
            .await
            .status,
        200
    );
    assert_eq!(
        whoami_with_cert(&server, &other_chain, &other_key).await.0,
        0
    );
    audit_reasons(
        &api,
        &[
            "expired",
            "not yet valid",
            "unknown issuer (self-signed, or not a tenant's CA)",
            "bad signature (a key that does not match the certificate)",
            "not a device certificate",
        ],
    )
    .await;
    // Deregistering the CA stops its devices.
    assert_eq!(api.delete(&format!("/pki/cas/{ca_id}")).await.status, 204);
    assert_eq!(whoami_with_cert(&server, &chain, &key).await.0, 0);
}

#[tokio::test]
async fn devices_renew_their_own_certificates_with_an_overlap() {
    let mut opts = common::Options::default();
    opts.env.push(("MOAT_ROTATION_OVERLAP".into(), "2s".into()));
    let server = Server::start_with(opts);
    let api = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let device = api.create("/devices", json!({"name": "gw-1"})).await;
    let (key1, csr1) = openssl_csr(dir.path(), "one");
    let first = api
        .post(
            &format!("/devices/{device}/certificates"),
            json!({"csr": csr1}),
        )
        .await;
    let chain1 = first.body["chain_pem"].as_str().unwrap().to_owned();

    // The device, authenticated by its certificate, asks for a new one.
    let (key2, csr2) = openssl_csr(dir.path(), "two");
    let renewed = device_client(&server, &chain1, &key1)
        .post(server.api("/device/certificates"))
        .json(&json!({"csr": csr2}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 201);
    let renewed: Value = renewed.json().await.unwrap();
    let chain2 = renewed["chain_pem"].as_str().unwrap().to_owned();
    assert_eq!(whoami_with_cert(&server, &chain2, &key2).await.0, 200);
    assert_eq!(
        whoami_with_cert(&server, &chain1, &key1).await.0,
        200,
        "the old one works during the overlap"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        whoami_with_cert(&server, &chain1, &key1).await.0,
        0,
        "then it stops"
    );
    assert_eq!(whoami_with_cert(&server, &chain2, &key2).await.0, 200);

    // Device keys rotate the same way.
    let k = api
        .post(&format!("/devices/{device}/keys"), json!({}))
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = Api::device(&server, &k)
        .post("/device/keys", json!({}))
        .await;
    assert_eq!(rotated.status, 201, "{:?}", rotated.body);
    let k2 = rotated.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        Api::device(&server, &k).get("/auth/whoami").await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        Api::device(&server, &k).get("/auth/whoami").await.status,
        401
    );
    assert_eq!(
        Api::device(&server, &k2).get("/auth/whoami").await.status,
        200
    );
}

#[tokio::test]
async fn the_server_certificate_is_renewed_without_a_restart() {
    let server = Server::start();
    let api = admin(&server).await;
    async fn presented(server: &Server) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(
            std::fs::read_to_string(server.ca_path())
                .unwrap()
                .as_bytes(),
        ) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(moat_pki_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(server.url.trim_start_matches("https://"))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    }
    let before = presented(&server).await;
    assert_eq!(
        api.post("/pki/server-certificate/renew", json!({}))
            .await
            .status,
        204
    );
    let after = presented(&server).await;
    assert_ne!(
        before, after,
        "new handshakes present the renewed certificate"
    );
    assert_eq!(api.get("/auth/whoami").await.status, 200);
}

#[tokio::test]
async fn a_device_holds_at_most_ten_usable_keys_issued_or_rotated() {
    let server = Server::start();
    let api = admin(&server).await;
    let device = api.create("/devices", json!({"name": "capped"})).await;
    let mut tokens = Vec::new();
    for _ in 0..10 {
        let k = api
            .post(&format!("/devices/{device}/keys"), json!({}))
            .await;
        assert_eq!(k.status, 201);
        tokens.push(k.body["token"].as_str().unwrap().to_owned());
    }
    let eleventh = api
        .post(&format!("/devices/{device}/keys"), json!({}))
        .await;
    assert_eq!(eleventh.status, 409, "{:?}", eleventh.body);
    // Rotation makes a key too: at the cap it is refused, and the old key stays.
    let rotated = Api::device(&server, &tokens[0])
        .post("/device/keys", json!({}))
        .await;
    assert_eq!(rotated.status, 409, "{:?}", rotated.body);
    assert_eq!(
        Api::device(&server, &tokens[0])
            .get("/auth/whoami")
            .await
            .status,
        200
    );
}
