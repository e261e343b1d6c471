//! Findings of the schemathesis fuzz runs (`schema_fuzz.rs`), each pinned
//! by a test of its own: connections refused requests leave usable, and
//! tenants that keep an admin.

mod common;

use std::sync::Arc;

use common::{ADMIN_PASSWORD, Api, Server, user_in};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Big enough that hyper has not read all of it when a handler refuses the
/// request without reading it; small enough to sit in the socket buffers.
const BODY_LEN: usize = 256 * 1024;

#[tokio::test]
async fn a_request_refused_before_its_body_is_read_leaves_the_next_one_working() {
    let server = Server::start();
    let token = server.admin_token().await;
    let padding = "x".repeat(BODY_LEN);
    let body = json!({ "name": "boiler", "padding": padding }).to_string();
    for (why, head, status) in [
        (
            "an unknown path",
            "POST /api/v1/no-such-thing HTTP/1.1\r\n",
            404,
        ),
        (
            "a bad credential",
            "POST /api/v1/devices HTTP/1.1\r\nauthorization: Bearer not-a-token\r\n",
            401,
        ),
        (
            "a malformed path parameter",
            &format!(
                "PATCH /api/v1/devices/not-a-uuid HTTP/1.1\r\nauthorization: Bearer {token}\r\n"
            ),
            400,
        ),
    ] {
        let mut conn = Conn::open(&server).await;
        let first = conn.send(&format!("{head}{}", json_body(&body))).await;
        let first = first.unwrap_or_else(|e| panic!("{why}: no answer: {e}"));
        assert_eq!(first.status, status, "{why}: {first:?}");
        if first.closes() {
            conn = Conn::open(&server).await;
        }
        let second = conn
            .send("GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap_or_else(|e| {
                panic!("{why}: the connection was closed without `Connection: close`: {e}")
            });
        assert_eq!(second.status, 200, "{why}: {second:?}");
    }
}

#[tokio::test]
async fn a_request_refused_after_its_body_is_read_keeps_the_connection() {
    let server = Server::start();
    let token = server.admin_token().await;
    let mut conn = Conn::open(&server).await;
    // Read whole, then refused: a name too long.
    let body = json!({ "name": "n".repeat(BODY_LEN) }).to_string();
    let first = conn
        .send(&format!(
            "POST /api/v1/devices HTTP/1.1\r\nauthorization: Bearer {token}\r\n{}",
            json_body(&body)
        ))
        .await
        .unwrap();
    assert_eq!(first.status, 422, "{first:?}");
    assert!(!first.closes(), "{first:?}");
    let second = conn.send("GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(second.status, 200, "{second:?}");
}

/// The rest of a request: its JSON headers, a blank line and `body`.
fn json_body(body: &str) -> String {
    format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One HTTP/1.1 connection over TLS, used as clients use keep-alive: a
/// request at a time, the next one on the same connection unless the last
/// response said `Connection: close`.
struct Conn {
    tls: TlsStream<TcpStream>,
    host: String,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower case, `name: value` a line.
    headers: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.headers.lines().any(|l| l == "connection: close")
    }
}

impl Conn {
    async fn open(server: &Server) -> Self {
        let pem = std::fs::read_to_string(server.ca_path()).unwrap();
        let config = moat_pki::tls::client_config(&pem).unwrap();
        let host = server.url.trim_start_matches("https://").to_owned();
        let tcp = TcpStream::connect(&host).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Self { tls, host }
    }

    /// Sends `request` (its request line and the rest; a `host` header is
    /// added) and reads the whole response. The request is written while
    /// the response is read, as a server may answer before reading it all.
    async fn send(&mut self, request: &str) -> std::io::Result<Answer> {
        let (line, rest) = request.split_once("\r\n").unwrap();
        let request = format!("{line}\r\nhost: {}\r\n{rest}", self.host);
        let (mut rx, mut tx) = tokio::io::split(&mut self.tls);
        let write = async {
            // A server that answers early may close before taking it all.
            let _ = tx.write_all(request.as_bytes()).await;
            let _ = tx.flush().await;
        };
        let read = async {
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0; 16 * 1024];
                let n = rx.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let status = head[9..12].parse().unwrap();
            let headers = head.split_once("\r\n").unwrap().1.replace("\r\n", "\n");
            let len: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.parse().unwrap());
            while buf.len() < head_end + len {
                let mut chunk = [0; 16 * 1024];
                let n = rx.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(Answer { status, headers })
        };
        let ((), answer) = tokio::join!(write, read);
        answer
    }
}

#[tokio::test]
async fn no_change_leaves_a_tenant_without_an_enabled_admin() {
    let server = Server::start();
    let root = Api::bearer(&server, &server.admin_token().await);
    let tenant = root.create("/tenants", json!({"name": "acme"})).await;
    let key = root
        .post("/apikeys", json!({"name": "ops", "role": "admin"}))
        .await;
    assert_eq!(key.status, 201, "{key:?}");
    let by_key = Api::bearer(&server, key.body["token"].as_str().unwrap());
    let boss = user_in(&server, &root, &tenant, "boss", "admin").await;
    let boss_path = format!("/users/{}", user_id(&boss).await);

    // The last enabled admin: neither an admin key nor an admin above may
    // demote, disable or delete it (the admin itself may not either, but
    // for another reason: nobody changes their own role).
    let refused = |r: common::Reply| {
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{r:?}"
        );
        assert_eq!(
            r.body["detail"], "a tenant keeps at least one enabled admin",
            "{r:?}"
        );
    };
    for api in [&by_key, &root] {
        refused(api.patch(&boss_path, json!({"role": "operator"})).await);
        refused(api.patch(&boss_path, json!({"disabled": true})).await);
        refused(api.delete(&boss_path).await);
    }
    // Changes that keep it an enabled admin still go through.
    let r = by_key
        .patch(
            &boss_path,
            json!({"role": "admin", "disabled": false, "display_name": "Boss"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // With a second admin, the first can go; then the second is the last.
    let deputy = root
        .create(
            "/users",
            json!({"username": "deputy", "password": "a password long enough",
                   "role": "admin", "tenant_id": tenant}),
        )
        .await;
    let deputy_path = format!("/users/{deputy}");
    let r = by_key.patch(&boss_path, json!({"disabled": true})).await;
    assert_eq!(r.status, 200, "{r:?}");
    refused(by_key.patch(&deputy_path, json!({"role": "viewer"})).await);
    refused(by_key.delete(&deputy_path).await);
    // A disabled admin does not count; enabled again, it does.
    let r = by_key.patch(&boss_path, json!({"disabled": false})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = by_key.delete(&deputy_path).await;
    assert_eq!(r.status, 204, "{r:?}");

    // The platform's own tenant too: its only admin stays.
    let admin_path = format!("/users/{}", user_id(&root).await);
    refused(by_key.patch(&admin_path, json!({"disabled": true})).await);
    refused(by_key.patch(&admin_path, json!({"role": "auditor"})).await);
    refused(by_key.delete(&admin_path).await);
    server.login("admin", ADMIN_PASSWORD).await;
}

/// The id of the user `api` signs in as.
async fn user_id(api: &Api) -> String {
    let r = api.get("/auth/whoami").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["subject"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no subject id in {r:?}"))
        .to_owned()
}
