//! Device identity from the `moat` command line against a real server:
//! certificates (CSR from `openssl req`, generated keys, PKCS#12, `--out`
//! files), revocation, CRLs read back by `openssl crl`, the CAs, expiring
//! credentials, key rotation; bulk import in checked batches; claim codes,
//! claiming and a device bootstrapping with its code.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Api, Server};
use serde_json::{Value, json};

use common::cli::Cli;
use common::device::{OwnCa, openssl};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// A fresh P-256 key's CSR (PEM), made with rcgen (much faster than openssl).
fn csr(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// A serial as openssl prints it compared with the API's (hex, any case,
/// leading zeros aside).
fn same_serial(a: &str, b: &str) -> bool {
    let norm = |x: &str| x.trim().trim_start_matches('0').to_ascii_lowercase();
    norm(a) == norm(b)
}

#[tokio::test]
async fn certificates_cas_and_crls_from_the_command_line() {
    let server = Server::start();
    let cli = Cli::admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli.ok(&["device", "create", "pump-1"]).await;

    // From a CSR made by openssl: the device keeps its key, so no key file.
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-out",
            "dev.csr",
            "-subj",
            "/CN=pump-1",
        ],
    );
    let out = d.join("csr-out");
    let issued = cli
        .json(&[
            "device",
            "cert",
            "issue",
            "pump-1",
            "--csr",
            d.join("dev.csr").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .await;
    let first_id = s(&issued["id"]).to_owned();
    let first_serial = s(&issued["serial"]).to_owned();
    for f in ["pump-1.crt", "pump-1.chain.pem", "ca.pem"] {
        assert!(out.join(f).exists(), "{f} is written");
    }
    assert!(!out.join("pump-1.key").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("ca.pem")).unwrap(),
        std::fs::read_to_string(server.ca_path()).unwrap()
    );
    openssl(
        &out,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "pump-1.chain.pem",
            "pump-1.crt",
        ],
    );
    assert_eq!(
        openssl(d, &["pkey", "-in", "dev.key", "-pubout"]),
        openssl(&out, &["x509", "-in", "pump-1.crt", "-noout", "-pubkey"]),
        "the certificate carries the CSR's key"
    );

    // A generated key: written 0600, and it matches the certificate.
    let out = d.join("gen-out");
    cli.ok(&[
        "device",
        "cert",
        "issue",
        "pump-1",
        "--key-algorithm",
        "ecdsa-p256",
        "--validity-days",
        "10",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(mode(&out.join("pump-1.key")), 0o600);
    assert_eq!(
        openssl(&out, &["pkey", "-in", "pump-1.key", "-pubout"]),
        openssl(&out, &["x509", "-in", "pump-1.crt", "-noout", "-pubkey"])
    );

    // Without --out the PEMs are printed; PKCS#12 takes its password on stdin.
    let printed = cli.ok(&["device", "cert", "issue", "pump-1"]).await;
    assert!(
        printed.stdout.contains("BEGIN CERTIFICATE") && printed.stdout.contains("PRIVATE KEY"),
        "{}",
        printed.stdout
    );
    assert!(printed.stderr.contains("only time"), "{}", printed.stderr);
    let out = d.join("p12-out");
    let p12 = cli
        .run(
            &[
                "device",
                "cert",
                "issue",
                "pump-1",
                "--pkcs12",
                "--password-stdin",
                "--out",
                out.to_str().unwrap(),
            ],
            "a p12 password\n",
        )
        .await;
    assert!(p12.ok, "{}", p12.stderr);
    assert_eq!(mode(&out.join("pump-1.p12")), 0o600);
    assert!(!out.join("pump-1.key").exists());
    let weak = cli
        .run(
            &[
                "device",
                "cert",
                "issue",
                "pump-1",
                "--pkcs12",
                "--password-stdin",
            ],
            "short\n",
        )
        .await;
    assert!(
        !weak.ok && weak.stderr.contains("422") && weak.stderr.contains("pkcs12_password"),
        "the server's problem is shown: {}",
        weak.stderr
    );

    // List, revoke, and the revoked serial on the tenant CA's CRL.
    let certs = cli.json(&["device", "cert", "list", "pump-1"]).await;
    assert_eq!(certs.as_array().unwrap().len(), 4, "{certs}");
    let table = cli.ok(&["device", "cert", "list", "pump-1"]).await.stdout;
    assert!(
        table.contains("serial") && table.contains(&first_id),
        "{table}"
    );
    let revoked = cli
        .json(&[
            "device",
            "cert",
            "revoke",
            "pump-1",
            &first_id,
            "--reason",
            "key-compromise",
        ])
        .await;
    assert_eq!(revoked["revocation_reason"], "key_compromise");
    assert!(revoked["revoked_at"].is_string());

    let cas = cli.json(&["pki", "ca", "list"]).await;
    let platform = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "platform")
        .unwrap_or_else(|| panic!("{cas}"));
    let ca_id = s(&platform["id"]).to_owned();
    assert_eq!(
        cli.json(&["pki", "ca", "get", &ca_id]).await["id"],
        ca_id.as_str()
    );
    let crl = d.join("tenant.crl");
    cli.ok(&["pki", "crl", "--ca", &ca_id, "--out", crl.to_str().unwrap()])
        .await;
    let text = openssl(
        d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "tenant.crl",
            "-noout",
            "-text",
        ],
    );
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .collect();
    assert!(
        listed.iter().any(|l| same_serial(l, &first_serial)),
        "{first_serial} on the CRL:\n{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    cli.ok(&["pki", "crl", "--out", d.join("root.crl").to_str().unwrap()])
        .await;
    openssl(d, &["crl", "-inform", "DER", "-in", "root.crl", "-noout"]);

    // The root CA certificate, printed and written.
    let root = std::fs::read_to_string(server.ca_path()).unwrap();
    assert_eq!(cli.ok(&["pki", "ca-pem"]).await.stdout, root);
    cli.ok(&[
        "pki",
        "ca-pem",
        "--out",
        d.join("root.pem").to_str().unwrap(),
    ])
    .await;
    assert_eq!(std::fs::read_to_string(d.join("root.pem")).unwrap(), root);

    // Coming due: the 10-day certificate within 30 days, the rest not;
    // the revoked one never.
    let soon = cli.json(&["pki", "expiring"]).await;
    let soon = soon.as_array().unwrap();
    assert_eq!(soon.len(), 1, "{soon:?}");
    let all = cli.json(&["pki", "expiring", "--days", "400"]).await;
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != first_id.as_str())
    );
    let table = cli.ok(&["pki", "expiring"]).await.stdout;
    assert!(
        table.contains("certificate") && table.contains(s(&soon[0]["id"])),
        "{table}"
    );

    // A CA of the tenant's own, proven with the registration code.
    let code = cli.ok(&["pki", "ca", "registration-code"]).await.stdout;
    let code = code.trim();
    assert_eq!(code.len(), 32, "{code}");
    let own = OwnCa::new("ACME factory CA");
    std::fs::write(d.join("own.pem"), own.cert.pem()).unwrap();
    std::fs::write(d.join("proof.pem"), own.sign(code, 0, 1).0).unwrap();
    let registered = cli
        .json(&[
            "pki",
            "ca",
            "register",
            "--cert",
            d.join("own.pem").to_str().unwrap(),
            "--verification-cert",
            d.join("proof.pem").to_str().unwrap(),
            "--jit",
            "pending",
        ])
        .await;
    assert_eq!(registered["jit"], "pending");
    let own_id = s(&registered["id"]).to_owned();
    let updated = cli
        .json(&["pki", "ca", "update", &own_id, "--jit", "activate"])
        .await;
    assert_eq!(updated["jit"], "activate");
    let deleted = cli.ok(&["pki", "ca", "delete", &own_id]).await;
    assert!(
        deleted.stderr.contains("deregistered"),
        "{}",
        deleted.stderr
    );
    let gone = cli.run(&["pki", "ca", "get", &own_id], "").await;
    assert!(!gone.ok && gone.stderr.contains("404"), "{}", gone.stderr);

    // A device key rotated with --replaces: the old one works for the
    // overlap, and now expires.
    cli.ok(&["device", "create", "meter-1"]).await;
    let old = cli.ok(&["device", "key", "create", "meter-1"]).await;
    let old_token = old.stdout.trim().to_owned();
    let keys = cli.json(&["device", "key", "list", "meter-1"]).await;
    let old_id = s(&keys[0]["id"]).to_owned();
    assert!(keys[0]["expires_at"].is_null());
    let new = cli
        .ok(&["device", "key", "create", "meter-1", "--replaces", &old_id])
        .await;
    let new_token = new.stdout.trim();
    assert!(new_token.starts_with("moat_dk_") && new_token != old_token);
    for token in [old_token.as_str(), new_token] {
        let who = Api::device(&server, token).get("/auth/whoami").await;
        assert_eq!(who.status, 200, "{who:?}");
    }
    let keys = cli.json(&["device", "key", "list", "meter-1"]).await;
    let old_key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == old_id.as_str())
        .unwrap();
    assert!(old_key["expires_at"].is_string(), "{keys}");
}

/// A CSV of `n` devices; every fifth row has a CSR, and `bad` (1-based)
/// has a broken one.
fn devices_csv(n: usize, bad: Option<usize>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["name", "tags", "csr"]).unwrap();
    for i in 1..=n {
        let name = format!("sensor-{i:03}");
        let csr = if Some(i) == bad {
            "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned()
        } else if i % 5 == 0 {
            csr(&name)
        } else {
            String::new()
        };
        w.write_record([name.as_str(), "line:a;batch:7", &csr])
            .unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

#[tokio::test]
async fn a_file_of_devices_is_checked_then_imported_in_batches() {
    let server = Server::start();
    let cli = Cli::admin(&server).await;
    cli.ok(&["tenant", "create", "factory"]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("devices.csv");
    std::fs::write(&good, devices_csv(250, None)).unwrap();
    let bad = d.join("bad.csv");
    std::fs::write(&bad, devices_csv(250, Some(234))).unwrap();
    let good = good.to_str().unwrap();
    let import = |file: &str| -> Vec<String> {
        [
            "device",
            "import",
            file,
            "--tenant",
            "factory",
            "--batch-size",
            "100",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let count = || async {
        cli.json(&[
            "device", "list", "--tenant", "factory", "--all", "--limit", "500",
        ])
        .await["items"]
            .as_array()
            .unwrap()
            .len()
    };

    // A broken CSR in the third batch: reported by its row in the file,
    // and nothing is imported, not even the good batches before it.
    let args = import(bad.to_str().unwrap());
    let r = cli
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "")
        .await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("row 234 (sensor-234): csr:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was imported"), "{}", r.stderr);
    assert!(!r.stderr.contains("row 34 "), "{}", r.stderr);
    assert_eq!(count().await, 0);

    // A dry run checks and stores nothing.
    let mut args = import(good);
    args.extend(["--dry-run", "--output", "json"].map(str::to_owned));
    let r = cli
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let checked = r.json();
    assert_eq!(checked["dry_run"], true);
    let results = checked["results"].as_array().unwrap();
    assert_eq!(results.len(), 250);
    assert!(results.iter().all(|r| r["status"] == "would_create"));
    assert_eq!(count().await, 0);

    // The import: three batches, certificates for the CSR rows written out.
    let certs = d.join("certs");
    let mut args = import(good);
    args.extend(["--out", certs.to_str().unwrap(), "--output", "json"].map(str::to_owned));
    let r = cli
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains('\u{1b}'),
        "no progress bar off a terminal: {:?}",
        r.stderr
    );
    let done = r.json();
    assert_eq!(
        (
            &done["total"],
            &done["created"],
            &done["unchanged"],
            &done["certificates_issued"]
        ),
        (&json!(250), &json!(250), &json!(0), &json!(50)),
        "{}",
        done["results"][0]
    );
    let results = done["results"].as_array().unwrap();
    let rows: Vec<u64> = results.iter().map(|r| r["row"].as_u64().unwrap()).collect();
    assert_eq!(
        rows,
        (1..=250).collect::<Vec<_>>(),
        "rows numbered as in the file"
    );
    assert_eq!(results[204]["name"], "sensor-205");
    assert_eq!(std::fs::read_dir(&certs).unwrap().count(), 50);
    assert!(certs.join("sensor-205.crt").exists());
    assert_eq!(count().await, 250);
    let tagged = cli
        .json(&["device", "get", "sensor-250", "--tenant", "factory"])
        .await;
    assert_eq!(tagged["tags"], json!(["line:a", "batch:7"]));

    // Again: every row unchanged, each CSR row given its certificate back.
    let args = import(good);
    let r = cli
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(
        r.stdout
            .contains("created 0, unchanged 250, certificates issued 0"),
        "{}",
        r.stdout
    );
    let mut args = import(good);
    args.extend(["--output", "json"].map(str::to_owned));
    let again = cli
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .json();
    assert_eq!(
        again["results"][4]["certificate_id"], done["results"][4]["certificate_id"],
        "{}",
        again["results"][4]
    );
    assert_eq!(count().await, 250);

    // JSON works too, its format told by the extension.
    let file = d.join("more.json");
    std::fs::write(
        &file,
        json!({"devices": [{"name": "gw-1", "tags": ["gw"]}, {"name": "gw-2", "csr": csr("gw-2")}]})
            .to_string(),
    )
    .unwrap();
    let r = cli
        .ok(&[
            "device",
            "import",
            file.to_str().unwrap(),
            "--tenant",
            "factory",
        ])
        .await;
    assert!(
        r.stdout
            .contains("created 2, unchanged 0, certificates issued 1"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn a_claim_code_claims_a_device_which_then_bootstraps() {
    let server = Server::start();
    let cli = Cli::admin(&server).await;
    let acme = cli.json(&["tenant", "create", "acme"]).await;

    let made = cli
        .json(&[
            "claim-code",
            "create",
            "--count",
            "2",
            "--prefix",
            "kit",
            "--expires-in-days",
            "7",
        ])
        .await;
    let codes = made["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 2);
    assert!(s(&codes[0]["device"]["name"]).starts_with("kit-"));
    let code = s(&codes[0]["code"]).to_owned();
    let table = cli.ok(&["claim-code", "create"]).await;
    assert!(table.stdout.contains("code") && table.stderr.contains("only time"));
    let listed = cli.json(&["claim-code", "list"]).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
    assert!(
        !listed.to_string().contains(&code),
        "codes are never listed"
    );

    let device = cli
        .json(&[
            "device", "claim", &code, "--tenant", "acme", "--name", "boiler",
        ])
        .await;
    assert_eq!(device["tenant_id"], acme["id"]);
    assert_eq!(device["name"], "boiler");
    let twice = cli
        .run(&["device", "claim", &code, "--tenant", "acme"], "")
        .await;
    assert!(
        !twice.ok && twice.stderr.contains("404") && twice.stderr.contains("was used"),
        "{}",
        twice.stderr
    );

    // The device fetches its certificate with the code; once.
    let device_api = Api::anonymous(&server);
    let boot = device_api
        .post("/bootstrap", json!({"code": code, "csr": csr("boiler")}))
        .await;
    assert_eq!(boot.status, 201, "{boot:?}");
    assert_eq!(boot.body["certificate"]["device_id"], device["id"]);
    assert!(s(&boot.body["certificate_pem"]).contains("BEGIN CERTIFICATE"));
    let again = device_api
        .post("/bootstrap", json!({"code": code, "csr": csr("boiler")}))
        .await;
    assert!(again.status >= 400, "{again:?}");
    let certs = cli
        .json(&["device", "cert", "list", "boiler", "--tenant", "acme"])
        .await;
    assert_eq!(certs.as_array().unwrap().len(), 1);
}
