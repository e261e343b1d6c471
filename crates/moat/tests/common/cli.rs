//! Runs the `moat` command line as a user would, with its own credentials
//! file.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

use super::{ADMIN_PASSWORD, Server, moat_bin};

/// What a `moat` run left behind.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `moat ARGS` with its own credentials file, `stdin` piped in.
pub struct Cli {
    pub creds: PathBuf,
    _home: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        Self {
            creds: home.path().join("moat/credentials.json"),
            _home: home,
        }
    }

    pub async fn run_env(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut cmd = tokio::process::Command::new(moat_bin());
        cmd.args(args)
            .env("MOAT_CREDENTIALS", &self.creds)
            .env_remove("MOAT_URL")
            .env_remove("MOAT_CACERT")
            .env_remove("MOAT_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("moat runs");
        {
            use tokio::io::AsyncWriteExt;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn run(&self, args: &[&str], stdin: &str) -> Run {
        self.run_env(args, stdin, &[]).await
    }

    /// Runs and insists on success.
    pub async fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args, "").await;
        assert!(r.ok, "moat {args:?} failed:\n{}\n{}", r.stdout, r.stderr);
        r
    }

    pub async fn login(&self, server: &Server, user: &str, password: &str) {
        let ca = server.ca_path();
        let args = [
            "login",
            "--url",
            &server.url,
            "--cacert",
            ca.to_str().unwrap(),
            "--username",
            user,
            "--password-stdin",
        ];
        let r = self.run(&args, &format!("{password}\n")).await;
        assert!(r.ok, "login failed: {}", r.stderr);
    }

    /// A client signed in as the bootstrap admin.
    pub async fn admin(server: &Server) -> Self {
        let cli = Self::new();
        cli.login(server, "admin", ADMIN_PASSWORD).await;
        cli
    }

    /// Runs with `--output json` and insists on success.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        self.ok(&a).await.json()
    }
}
