//! The command line client: the same admin tasks as the API, over HTTPS.
//!
//! `moat login` saves tokens (see [`credentials`]); every other command
//! reuses them, or an API key from `--api-key` / `MOAT_API_KEY`. Wherever a
//! command takes a tenant, user, device or channel, a name works as well as
//! an id. Device identity (certificates, CAs, bulk import, claim codes) has
//! its own modules: [`certificates`], [`pki`], [`import`], [`claims`].

mod certificates;
mod claims;
mod credentials;
mod http;
mod import;
mod output;
mod pki;
mod resources;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) use output::Format;
pub(crate) use resources::{
    ApiKeyCommand, AuditListArgs, ChannelCommand, ConnectArgs, ConnectionsArgs, DeviceCommand,
    TenantCommand, UserCommand, audit_list,
};

/// Options every client command takes.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Client options")]
pub(crate) struct Global {
    /// The server, e.g. https://moat.example:8443 [default: the one you logged in to].
    #[arg(long, env = "MOAT_URL", global = true)]
    pub(crate) url: Option<String>,
    /// The CA certificate to trust [default: the one given at login, else moat-data/ca.pem].
    #[arg(long, env = "MOAT_CACERT", global = true)]
    pub(crate) cacert: Option<PathBuf>,
    /// Use this API key instead of the saved sign-in.
    #[arg(long, env = "MOAT_API_KEY", global = true, hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// How to print answers.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub(crate) output: Format,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    /// Signs in and saves the session for the other commands.
    Login(LoginArgs),
    /// Signs out: revokes the saved session and deletes it.
    Logout,
    /// Shows who the current credentials belong to.
    Whoami,
    /// Manages tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manages users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manages devices, their keys and certificates; imports and claims them.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manages channels.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Connects a device to a channel (both rights when neither flag is given).
    Connect(ConnectArgs),
    /// Disconnects a device from a channel.
    Disconnect(resources::DisconnectArgs),
    /// Lists the connections of a device or of a channel.
    Connections(ConnectionsArgs),
    /// Manages API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Certificate authorities, CRLs and what is due for renewal.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Makes and lists claim codes (devices waiting for their owner).
    #[command(subcommand)]
    ClaimCode(claims::ClaimCodeCommand),
}

#[derive(clap::Args, Debug)]
pub(crate) struct LoginArgs {
    /// Your username.
    #[arg(long)]
    username: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
}

pub(crate) async fn run(cmd: Command, g: Global) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Login(args) => login(args, &g).await,
        Command::Logout => logout(&g).await,
        Command::Whoami => {
            let mut s = http::Session::open(&g)?;
            let v = s.get("/auth/whoami").await?;
            output::print(&v, output::Kind::User, g.output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(c) => pki::run(c, &g).await,
        Command::ClaimCode(c) => claims::run(c, &g).await,
        other => resources::run(other, &g).await,
    }
}

/// A password: asked for on the terminal (twice when `confirm`), or read
/// from standard input's first line with `--password-stdin` or when standard
/// input is not a terminal (a pipe or a here-string in a script).
pub(crate) fn read_password(
    from_stdin: bool,
    prompt: &str,
    confirm: bool,
) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        if p.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(p);
    }
    let p = rpassword::prompt_password(prompt)?;
    if confirm && rpassword::prompt_password("again: ")? != p {
        bail!("the passwords differ");
    }
    Ok(p)
}

async fn login(args: LoginArgs, g: &Global) -> anyhow::Result<ExitCode> {
    let url = g
        .url
        .clone()
        .unwrap_or_else(|| "https://localhost:8443".into())
        .trim_end_matches('/')
        .to_owned();
    let cacert = g
        .cacert
        .clone()
        .unwrap_or_else(|| PathBuf::from("moat-data/ca.pem"));
    let cacert = std::fs::canonicalize(&cacert)
        .with_context(|| format!("the CA certificate {} (pass --cacert)", cacert.display()))?;
    let password = read_password(args.password_stdin, "password: ", false)?;
    let client = http::client_for(&cacert)?;
    let res = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": args.username, "password": password}))
        .send()
        .await
        .with_context(|| format!("reaching {url}"))?;
    let (status, v) = http::read(res).await?;
    let v = http::check(status, v)?;
    let creds = credentials::Credentials {
        url,
        cacert,
        username: args.username,
        access_token: http::string(&v, "access_token")?,
        refresh_token: http::string(&v, "refresh_token")?,
    };
    let path = credentials::path()?;
    credentials::save(&path, &creds)?;
    eprintln!(
        "signed in as {} ({}); session saved to {}",
        creds.username,
        v["user"]["role"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn logout(g: &Global) -> anyhow::Result<ExitCode> {
    let path = credentials::path()?;
    if credentials::load(&path)?.is_none() {
        eprintln!("not signed in");
        return Ok(ExitCode::SUCCESS);
    }
    let s = http::Session::open(g)?;
    if let Some(rt) = s.refresh_token() {
        let res = s
            .http()
            .post(format!("{}/api/v1/auth/logout", s.url()))
            .json(&json!({"refresh_token": rt}))
            .send()
            .await;
        if let Err(e) = res {
            eprintln!(
                "warning: could not reach the server to revoke the session ({e}); deleting it locally"
            );
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
    eprintln!("signed out");
    Ok(ExitCode::SUCCESS)
}

/// Runs `call` and prints its answer.
pub(crate) async fn show(
    s: &mut http::Session,
    method: Method,
    path: &str,
    body: Option<Value>,
    kind: output::Kind,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let v = s.call(method, path, body).await?;
    if !v.is_null() {
        output::print(&v, kind, format);
    }
    Ok(ExitCode::SUCCESS)
}
