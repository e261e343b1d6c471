//! The API client behind every command: trusts only the given CA, sends the
//! saved token (refreshing it once when it has expired) or an API key, and
//! turns problem documents into errors a person can act on.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Global;
use super::credentials::{self, Credentials};

/// A request body and its content type.
pub(crate) struct Body {
    content_type: &'static str,
    bytes: Vec<u8>,
}

impl Body {
    pub(crate) fn json(v: &Value) -> Self {
        Self::raw("application/json", v.to_string().into_bytes())
    }

    pub(crate) fn raw(content_type: &'static str, bytes: Vec<u8>) -> Self {
        Self {
            content_type,
            bytes,
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
    auth: Auth,
}

enum Auth {
    ApiKey(String),
    Saved { path: PathBuf, creds: Credentials },
}

/// An HTTPS client that trusts `cacert` and nothing else.
pub(crate) fn client_for(cacert: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read_to_string(cacert).with_context(|| {
        format!(
            "reading the CA certificate {} (pass --cacert)",
            cacert.display()
        )
    })?;
    let tls = moat_pki::tls::client_config(&pem).context("reading the CA certificate")?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()?)
}

impl Session {
    /// A session from `--api-key` or the credentials `moat login` saved;
    /// `--url` and `--cacert` override what was saved.
    pub(crate) fn open(g: &Global) -> anyhow::Result<Self> {
        let path = credentials::path()?;
        let saved = credentials::load(&path)?;
        let (url, cacert, auth) = match (&g.api_key, saved) {
            (Some(key), saved) => {
                let url = g
                    .url
                    .clone()
                    .or_else(|| saved.as_ref().map(|c| c.url.clone()));
                let cacert = g
                    .cacert
                    .clone()
                    .or_else(|| saved.as_ref().map(|c| c.cacert.clone()));
                (url, cacert, Auth::ApiKey(key.clone()))
            }
            (None, Some(creds)) => {
                let url = g.url.clone().unwrap_or_else(|| creds.url.clone());
                let cacert = g.cacert.clone().unwrap_or_else(|| creds.cacert.clone());
                (Some(url), Some(cacert), Auth::Saved { path, creds })
            }
            (None, None) => bail!("not signed in: run `moat login` (or pass --api-key)"),
        };
        let url = url.context("no server URL: pass --url or set MOAT_URL")?;
        let cacert = cacert.unwrap_or_else(|| PathBuf::from("moat-data/ca.pem"));
        Ok(Self {
            http: client_for(&cacert)?,
            url: url.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    fn header(&self) -> String {
        match &self.auth {
            Auth::ApiKey(k) => format!("Bearer {k}"),
            Auth::Saved { creds, .. } => format!("Bearer {}", creds.access_token),
        }
    }

    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Body>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/api/v1{path}", self.url))
            .header("authorization", self.header());
        if let Some(b) = body {
            req = req
                .header("content-type", b.content_type)
                .body(b.bytes.clone());
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        read(res).await
    }

    /// Calls the API; a 401 with saved credentials refreshes them once.
    pub(crate) async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|v| Body::json(&v));
        let (status, value) = self.request(method, path, body).await?;
        check(status, value)
    }

    /// Like [`Session::call`], but any body and content type, and the status
    /// and answer as they came, for callers that read a problem's details.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, value) = self.send(&method, path, body.as_ref()).await?;
        if status == StatusCode::UNAUTHORIZED {
            if let Auth::Saved { path: file, creds } = &mut self.auth {
                let res = self
                    .http
                    .post(format!("{}/api/v1/auth/refresh", self.url))
                    .json(&json!({"refresh_token": creds.refresh_token}))
                    .send()
                    .await?;
                let (s, v) = read(res).await?;
                if !s.is_success() {
                    bail!("the session has expired or was revoked: run `moat login` again");
                }
                creds.access_token = string(&v, "access_token")?;
                creds.refresh_token = string(&v, "refresh_token")?;
                credentials::save(file, creds)?;
                return self.send(&method, path, body.as_ref()).await;
            }
        }
        Ok((status, value))
    }

    /// Fetches a public document (the CA certificate, a CRL) as bytes: no
    /// credentials are sent, and none are needed.
    pub(crate) async fn public_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let res = self
            .http
            .get(format!("{}/api/v1{path}", self.url))
            .send()
            .await
            .with_context(|| format!("reaching {}", self.url))?;
        if res.status().is_success() {
            return Ok(res.bytes().await?.to_vec());
        }
        let (status, v) = read(res).await?;
        Err(anyhow::anyhow!(problem(status, &v)))
    }

    pub(crate) async fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// The saved refresh token, if signed in with a password.
    pub(crate) fn refresh_token(&self) -> Option<&str> {
        match &self.auth {
            Auth::Saved { creds, .. } => Some(&creds.refresh_token),
            Auth::ApiKey(_) => None,
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

pub(crate) async fn read(res: reqwest::Response) -> anyhow::Result<(StatusCode, Value)> {
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res.bytes().await?;
    let mut value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if let (Some(r), Value::Object(m)) = (retry, &mut value) {
        m.insert("retry_after".into(), r.into());
    }
    Ok((status, value))
}

/// `Ok(body)` for a success, else the problem as an error.
pub(crate) fn check(status: StatusCode, body: Value) -> anyhow::Result<Value> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(anyhow::anyhow!(problem(status, &body)))
    }
}

/// A problem document as lines for a person.
pub(crate) fn problem(status: StatusCode, body: &Value) -> String {
    let mut out = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let title_only = body.get("detail").is_none();
    if let Some(d) = body.get("detail").and_then(Value::as_str) {
        out.push_str(": ");
        out.push_str(d);
    } else if title_only && !body.is_null() {
        out.push_str(&format!(": {body}"));
    }
    for e in body
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "\n  {}: {}",
            e["field"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("?")
        ));
    }
    if let Some(r) = body.get("retry_after").and_then(Value::as_str) {
        out.push_str(&format!("\n  retry after {r} s"));
    }
    out
}

pub(crate) fn string(v: &Value, key: &str) -> anyhow::Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("the server's answer has no {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_like_sentences() {
        let body = json!({"status": 422, "detail": "2 invalid field(s)", "errors": [{"field": "name", "message": "must not be empty"}]});
        let text = problem(StatusCode::UNPROCESSABLE_ENTITY, &body);
        assert_eq!(
            text,
            "422 Unprocessable Entity: 2 invalid field(s)\n  name: must not be empty"
        );
        let throttled = problem(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"detail": "too many", "retry_after": "3"}),
        );
        assert!(throttled.ends_with("retry after 3 s"));
    }
}
