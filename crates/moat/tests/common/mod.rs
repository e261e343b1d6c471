//! The harness every end-to-end test uses: starts the real `moat` binary on
//! an ephemeral port with a temporary data directory, and gives an HTTPS
//! client that trusts the CA that server generated.

#![allow(dead_code, unreachable_pub)]

pub mod cli;
pub mod device;
pub mod messages;
pub mod mqtt;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT` when started with `--insecure-dev`.
    pub plain_url: Option<String>,
    /// `127.0.0.1:PORT` of MQTT over TLS.
    pub mqtt: String,
    /// `127.0.0.1:PORT` of plain MQTT, with `--insecure-dev`.
    pub mqtt_plain: Option<String>,
    /// `127.0.0.1:PORT` of CoAP over DTLS (UDP).
    pub coap: String,
    /// `127.0.0.1:PORT` of plain CoAP (UDP), with `--insecure-dev`.
    pub coap_plain: Option<String>,
    pub stdout: Vec<String>,
    pub stderr: mpsc::Receiver<String>,
}

pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: vec![("MOAT_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into())],
        }
    }
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, opts)
    }

    /// Starts on an existing data directory (restarts).
    pub fn start_in(dir: tempfile::TempDir, opts: Options) -> Self {
        Self::try_start_in(dir, opts)
            .unwrap_or_else(|(_, msg)| panic!("moat serve did not start: {msg}"))
    }

    /// Like `start_in`, but a server that exits before listening is an
    /// `Err` with the directory back and what it printed.
    pub fn try_start_in(
        dir: tempfile::TempDir,
        opts: Options,
    ) -> Result<Self, (tempfile::TempDir, String)> {
        let mut cmd = Command::new(moat_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--mqtt-listen", "127.0.0.1:0"])
            .args(["--mqtt-plain-listen", "127.0.0.1:0"])
            .args(["--coap-listen", "127.0.0.1:0"])
            .args(["--coap-plain-listen", "127.0.0.1:0"])
            .args(&opts.args)
            .env_remove("MOAT_MASTER_KEY")
            .env("MOAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn moat serve");
        Self::wait_ready(child, dir)
    }

    /// Takes a spawned `moat serve` (stdout and stderr piped) and waits until
    /// it listens; panics if it does not.
    pub fn adopt(child: Child, dir: tempfile::TempDir) -> Self {
        Self::wait_ready(child, dir)
            .unwrap_or_else(|(_, msg)| panic!("moat serve did not start: {msg}"))
    }

    fn wait_ready(
        mut child: Child,
        dir: tempfile::TempDir,
    ) -> Result<Self, (tempfile::TempDir, String)> {
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let mut plain_url = None;
        let mut mqtt = String::new();
        let mut mqtt_plain = None;
        let mut coap = String::new();
        let mut coap_plain = None;
        loop {
            match out_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("mqtt listening on ") {
                        mqtt = addr.to_owned();
                    }
                    if let Some(addr) = line.strip_prefix("mqtt plain listening on ") {
                        mqtt_plain = Some(addr.to_owned());
                    }
                    if let Some(addr) = line.strip_prefix("coap listening on ") {
                        coap = addr.to_owned();
                    }
                    if let Some(addr) = line.strip_prefix("coap plain listening on ") {
                        coap_plain = Some(addr.to_owned());
                    }
                    if let Some(addr) = line.strip_prefix("http listening on ") {
                        plain_url = Some(format!("http://{addr}"));
                    }
                    if let Some(addr) = line.strip_prefix("https listening on ") {
                        let url = format!("https://{addr}");
                        lines.push(line);
                        // Keep draining stdout so the server never blocks on it.
                        std::thread::spawn(move || while out_rx.recv().is_ok() {});
                        return Ok(Self {
                            child,
                            dir,
                            url,
                            plain_url,
                            mqtt,
                            mqtt_plain,
                            coap,
                            coap_plain,
                            stdout: lines,
                            stderr: err_rx,
                        });
                    }
                    lines.push(line);
                }
                Err(_) => {
                    // The server exited (or hung) before listening.
                    let _ = child.kill();
                    let _ = child.wait();
                    let err: Vec<String> = err_rx.iter().collect();
                    return Err((
                        dir,
                        format!("stdout: {lines:?}\nstderr: {}", err.join("\n")),
                    ));
                }
            }
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("ca.pem")
    }

    pub fn client(&self) -> reqwest::Client {
        client_trusting(&self.ca_path())
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    /// Stops the server with SIGTERM and waits; returns the data directory
    /// for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Kills the server with SIGKILL, as a power cut would, and waits;
    /// returns the data directory for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Stops the server with SIGTERM; returns how it exited and everything
    /// it wrote to stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moat serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            err.push(line);
        }
        (status, err)
    }

    /// Logs in and returns an access token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .client()
            .post(self.api("/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "login as {username}: {}",
            r.text().await.unwrap()
        );
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read_to_string(ca).expect("ca.pem is written on start");
    let tls = moat_pki::tls::client_config(&pem).expect("client tls config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

/// A client bound to one server and one credential, for terse tests.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    /// The full `Authorization` header value, if any.
    pub auth: Option<String>,
}

/// A response: status, headers and the JSON body (`Null` when empty).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Reply {
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_owned()
    }
}

impl Api {
    pub fn anonymous(server: &Server) -> Self {
        Self {
            client: server.client(),
            base: server.api(""),
            auth: None,
        }
    }

    pub fn bearer(server: &Server, token: &str) -> Self {
        Self {
            auth: Some(format!("Bearer {token}")),
            ..Self::anonymous(server)
        }
    }

    pub fn device(server: &Server, key: &str) -> Self {
        Self {
            auth: Some(format!("Device {key}")),
            ..Self::anonymous(server)
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request reaches the server");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates something and returns its id, asserting a 201.
    pub async fn create(&self, path: &str, body: Value) -> String {
        let r = self.post(path, body).await;
        assert_eq!(r.status, 201, "POST {path}: {r:?}");
        r.id()
    }
}

/// Creates a user in `tenant` with `role` and returns a client signed in as them.
pub async fn user_in(
    server: &Server,
    admin: &Api,
    tenant: &str,
    username: &str,
    role: &str,
) -> Api {
    let password = "a password long enough";
    admin
        .create(
            "/users",
            json!({"username": username, "password": password, "role": role, "tenant_id": tenant}),
        )
        .await;
    Api::bearer(server, &server.login(username, password).await)
}
