//! A small client of Moat's API for the benchmarks: signs in as the
//! bootstrap admin over HTTPS, trusting only the server's own CA, and turns
//! any answer that is not a success into an error that shows the body.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::RequestBuilder;
use serde_json::{Value, json};

/// Long enough for an aggregation over ten million records.
const TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) struct Api {
    http: reqwest::Client,
    /// `https://host:port`, without a trailing slash.
    base: String,
    token: String,
}

impl Api {
    /// Signs in as `admin` with `password` at `url`, trusting `cacert`.
    pub(crate) async fn login(url: &str, cacert: &Path, password: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(cacert)
            .with_context(|| format!("reading the CA certificate {}", cacert.display()))?;
        let tls = moat_pki::tls::client_config(&pem).context("reading the CA certificate")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(TIMEOUT)
            .build()?;
        let base = url.trim_end_matches('/').to_owned();
        let login = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": password}));
        let body = check(login).await?;
        let token = body["access_token"]
            .as_str()
            .context("the login answer has no access_token")?
            .to_owned();
        Ok(Self { http, base, token })
    }

    /// `GET /api/v1{path}`, JSON.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        check(self.authed(self.http.get(self.api(path)))).await
    }

    /// As [`Self::get`], but `None` when the server answers 408: its
    /// request timeout ran out.
    pub(crate) async fn get_or_timeout(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let res = self.authed(self.http.get(self.api(path))).send().await?;
        if res.status() == reqwest::StatusCode::REQUEST_TIMEOUT {
            return Ok(None);
        }
        let status = res.status();
        let bytes = res.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(Some(serde_json::from_slice(&bytes)?))
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        check(self.authed(self.http.post(self.api(path))).json(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        check(self.authed(self.http.put(self.api(path))).json(body)).await
    }

    /// `GET {path}` outside the API (such as `/metrics`), as text.
    pub(crate) async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let res = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = res.status();
        let text = res.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {text}");
        }
        Ok(text)
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn authed(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.bearer_auth(&self.token)
    }
}

/// Sends `rb` and returns its JSON body, or fails with the status and body.
async fn check(rb: RequestBuilder) -> anyhow::Result<Value> {
    let res = rb.send().await?;
    let status = res.status();
    let url = res.url().path().to_owned();
    let bytes = res.bytes().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{url}: the answer is not JSON"))
}
