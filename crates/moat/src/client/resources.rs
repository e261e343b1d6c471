//! The resource commands: tenants, users, devices and their keys, channels,
//! connections, API keys and the audit log.

use std::process::ExitCode;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::certificates::DeviceCertCommand;
use super::import::ImportArgs;
use super::output::{self, Kind};
use super::{Command, Global, certificates, claims, http::Session, import, read_password, show};

/// The most rows `--all` fetches, so that a mistyped filter cannot run away.
const ALL_LIMIT: usize = 100_000;

/// Paging for list commands.
#[derive(clap::Args, Debug)]
pub(crate) struct Paging {
    /// Rows per page (1–500).
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after this cursor (printed under a page that has more).
    #[arg(long, conflicts_with = "all")]
    cursor: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all: bool,
}

/// Tags and metadata, shared by the resources that carry them.
#[derive(clap::Args, Debug)]
pub(crate) struct Labels {
    /// A tag such as `site:lyon`; repeat for more. On update, replaces all tags.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Option<Vec<String>>,
    /// A JSON object of metadata, e.g. '{"model":"X1"}'.
    #[arg(long, value_name = "JSON", value_parser = parse_object)]
    metadata: Option<Value>,
}

fn parse_object(s: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

impl Labels {
    fn into_body(self, body: &mut Map<String, Value>) {
        if let Some(t) = self.tags {
            body.insert("tags".into(), json!(t));
        }
        if let Some(m) = self.metadata {
            body.insert("metadata".into(), m);
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TenantCommand {
    /// Creates a tenant (a child of yours, or of --parent).
    Create {
        name: String,
        /// The parent tenant (name or id) [default: yours].
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        labels: Labels,
    },
    /// Lists the child tenants of yours, or of --parent.
    List {
        #[arg(long)]
        parent: Option<String>,
        /// Only names containing this (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Only tenants with this tag.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows a tenant.
    Get { tenant: String },
    /// Changes a tenant's name, tags or metadata.
    Update {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        labels: Labels,
    },
    /// Deletes an empty tenant.
    Delete { tenant: String },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum RoleArg {
    Admin,
    Operator,
    Viewer,
    Auditor,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::Operator => "operator",
            RoleArg::Viewer => "viewer",
            RoleArg::Auditor => "auditor",
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Creates a user; asks for the password twice unless --password-stdin.
    Create {
        username: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The user's tenant (name or id) [default: yours].
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lists users.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// Only usernames or display names containing this.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows a user.
    Get {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Changes a user's role, display name, status or password.
    Update {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        #[arg(long)]
        display_name: Option<String>,
        /// Disables the user (and ends their sessions).
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// Sets a new password (asked for; your own needs your current one too).
        #[arg(long)]
        password: bool,
        /// With --password: read the new password (and then, for yourself,
        /// the current one) from standard input, one per line.
        #[arg(long, requires = "password")]
        password_stdin: bool,
    },
    /// Deletes a user.
    Delete {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Ends every session of a user (tokens and refresh tokens).
    RevokeSessions {
        user: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum StateArg {
    Pending,
    Active,
    Quarantined,
    Revoked,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Pending => "pending",
            StateArg::Active => "active",
            StateArg::Quarantined => "quarantined",
            StateArg::Revoked => "revoked",
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum DeviceCommand {
    /// Registers a device.
    Create {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        labels: Labels,
        /// The initial state [default: active].
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Lists devices.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// Only names containing this (case-insensitive).
        #[arg(long)]
        name: Option<String>,
        /// Only devices with this tag.
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows a device.
    Get {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Changes a device's name, tags, metadata or state.
    Update {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        labels: Labels,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Deletes a device, its keys and its connections.
    Delete {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Manages a device's keys (for devices without a certificate).
    #[command(subcommand)]
    Key(DeviceKeyCommand),
    /// Manages a device's certificates.
    #[command(subcommand)]
    Cert(DeviceCertCommand),
    /// Imports devices from a CSV or JSON file, in batches.
    ///
    /// Every batch is checked first: if any row is wrong, each error is
    /// printed with its row number in the file (counting from 1, a CSV's
    /// header not counted) and nothing is imported. Then the batches are
    /// imported one by one. Each batch is stored all or nothing, and
    /// running the same import again is safe: rows already imported answer
    /// `unchanged` (a CSR row gets its certificate back), so an import cut
    /// short is finished by running it again.
    Import(ImportArgs),
    /// Claims a device with the code that came with it: the device moves
    /// into your tenant (or --tenant).
    Claim {
        code: String,
        /// A new name for the device.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum DeviceKeyCommand {
    /// Issues a key; it is printed once and never again.
    Create {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
        /// Days until it expires [default: never].
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// A key of this device that the new one rotates: it keeps working
        /// for the rotation overlap, then expires.
        #[arg(long, value_name = "KEY_ID")]
        replaces: Option<uuid::Uuid>,
    },
    /// Lists a device's keys (never the secrets).
    List {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revokes a key.
    Revoke {
        device: String,
        key_id: uuid::Uuid,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum PolicyArg {
    Senml,
    Json,
    Opaque,
    Sealed,
    E2e,
}

impl PolicyArg {
    fn as_str(self) -> &'static str {
        match self {
            PolicyArg::Senml => "senml",
            PolicyArg::Json => "json",
            PolicyArg::Opaque => "opaque",
            PolicyArg::Sealed => "sealed",
            PolicyArg::E2e => "e2e",
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// Creates a channel.
    Create {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        labels: Labels,
        /// What payloads the channel accepts [default: senml].
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        /// Days messages are kept [default: kept until deleted].
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Lists channels.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows a channel.
    Get {
        channel: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Changes a channel.
    Update {
        channel: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        labels: Labels,
        #[arg(long, value_enum)]
        policy: Option<PolicyArg>,
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Deletes a channel and its connections.
    Delete {
        channel: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The device (name or id).
    device: String,
    /// The channel (name or id).
    channel: String,
    /// The device may publish to the channel.
    #[arg(long)]
    publish: bool,
    /// The device may receive the channel's messages.
    #[arg(long)]
    subscribe: bool,
    /// The tenant both belong to, for names [default: yours].
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DisconnectArgs {
    device: String,
    channel: String,
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConnectionsArgs {
    /// The connections of this device.
    #[arg(long, required_unless_present = "channel", conflicts_with = "channel")]
    device: Option<String>,
    /// The connections of this channel.
    #[arg(long)]
    channel: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    paging: Paging,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ApiKeyCommand {
    /// Issues an API key; it is printed once and never again.
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        tenant: Option<String>,
        /// Days until it expires [default: the server's].
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Lists API keys (never the secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Shows an API key.
    Get { id: uuid::Uuid },
    /// Revokes an API key.
    Revoke { id: uuid::Uuid },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum OutcomeArg {
    Success,
    Denied,
    Failure,
}

#[derive(clap::Args, Debug)]
pub(crate) struct AuditListArgs {
    /// A tenant (name or id) and its children [default: yours].
    #[arg(long)]
    tenant: Option<String>,
    /// Only this actor, e.g. `user:<id>`.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action, e.g. `device.create`.
    #[arg(long)]
    action: Option<String>,
    /// Only this target, e.g. `device:<id>`.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    /// From this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Until this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    paging: Paging,
}

/// A path with a query built from the pairs that are set.
pub(super) fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut url = reqwest::Url::parse("http://x").expect("a constant URL parses");
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    match url.query() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// Lists one page, or every page with `--all`, and prints it.
pub(super) async fn list(
    s: &mut Session,
    path: &str,
    mut pairs: Vec<(&str, Option<String>)>,
    paging: Paging,
    kind: Kind,
    g: &Global,
) -> anyhow::Result<ExitCode> {
    pairs.push(("limit", paging.limit.map(|l| l.to_string())));
    if !paging.all {
        pairs.push(("cursor", paging.cursor));
        let v = s.get(&with_query(path, &pairs)).await?;
        output::print(&v, kind, g.output);
        return Ok(ExitCode::SUCCESS);
    }
    let items = all(s, path, pairs).await?;
    output::print(
        &json!({ "items": items, "next_cursor": null }),
        kind,
        g.output,
    );
    Ok(ExitCode::SUCCESS)
}

async fn all(
    s: &mut Session,
    path: &str,
    pairs: Vec<(&str, Option<String>)>,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p = pairs.clone();
        p.push(("cursor", cursor.take()));
        let v = s.get(&with_query(path, &p)).await?;
        items.extend(v["items"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) if items.len() < ALL_LIMIT => cursor = Some(c.to_owned()),
            Some(_) => bail!("more than {ALL_LIMIT} rows; narrow the filter"),
            None => return Ok(items),
        }
    }
}

/// The id of a tenant, user, device or channel given by name or id. A name
/// must match exactly one row (the API's `name` filter is a substring match,
/// so the exact match is picked here).
async fn resolve(
    s: &mut Session,
    what: &str,
    path: &str,
    field: &str,
    given: &str,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(given).is_ok() {
        return Ok(given.to_owned());
    }
    let scope = if path == "/tenants" {
        "parent_id"
    } else {
        "tenant_id"
    };
    let pairs = vec![
        (scope, tenant.map(str::to_owned)),
        ("name", Some(given.to_owned())),
        ("limit", Some("500".into())),
    ];
    let rows = all(s, path, pairs).await?;
    let hits: Vec<&Value> = rows
        .iter()
        .filter(|r| r[field].as_str() == Some(given))
        .collect();
    match hits.as_slice() {
        [one] => one["id"]
            .as_str()
            .map(str::to_owned)
            .context("the server's answer has no id"),
        [] => bail!("no {what} named {given:?} here (pass an id, or --tenant)"),
        many => bail!("{} {what}s are named {given:?}; pass an id", many.len()),
    }
}

pub(super) async fn tenant_id(
    s: &mut Session,
    tenant: Option<&str>,
) -> anyhow::Result<Option<String>> {
    match tenant {
        Some(t) => Ok(Some(
            resolve(s, "tenant", "/tenants", "name", t, None).await?,
        )),
        None => Ok(None),
    }
}

pub(super) fn object(pairs: Vec<(&str, Option<Value>)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

/// Calls an endpoint that answers nothing, and says what was done.
pub(super) async fn done(
    s: &mut Session,
    method: Method,
    path: &str,
    said: String,
) -> anyhow::Result<ExitCode> {
    s.call(method, path, None).await?;
    eprintln!("{said}");
    Ok(ExitCode::SUCCESS)
}

/// Prints an issued secret: the token on stdout alone (so that scripts can
/// capture it), the rest on stderr; or everything as JSON.
fn print_issued(v: &Value, what: &str, g: &Global) {
    if g.output == output::Format::Json {
        output::print(v, Kind::ApiKey, g.output);
        return;
    }
    eprintln!(
        "{what} {} issued; this is the only time its secret is shown:",
        v["key"]["id"].as_str().unwrap_or("?")
    );
    println!("{}", v["token"].as_str().unwrap_or_default());
}

pub(crate) async fn run(cmd: Command, g: &Global) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(g)?;
    let s = &mut s;
    let f = g.output;
    match cmd {
        Command::Tenant(c) => tenant(s, c, g).await,
        Command::User(c) => user(s, c, g).await,
        Command::Device(c) => device(s, c, g).await,
        Command::Channel(c) => channel(s, c, g).await,
        Command::Apikey(c) => apikey(s, c, g).await,
        Command::Connect(a) => {
            let t = tenant_id(s, a.tenant.as_deref()).await?;
            let d = resolve(s, "device", "/devices", "name", &a.device, t.as_deref()).await?;
            let c = resolve(s, "channel", "/channels", "name", &a.channel, t.as_deref()).await?;
            let (publish, subscribe) = if a.publish || a.subscribe {
                (a.publish, a.subscribe)
            } else {
                (true, true)
            };
            let body = json!({"publish": publish, "subscribe": subscribe});
            show(
                s,
                Method::PUT,
                &format!("/channels/{c}/connections/{d}"),
                Some(body),
                Kind::Connection,
                f,
            )
            .await
        }
        Command::Disconnect(a) => {
            let t = tenant_id(s, a.tenant.as_deref()).await?;
            let d = resolve(s, "device", "/devices", "name", &a.device, t.as_deref()).await?;
            let c = resolve(s, "channel", "/channels", "name", &a.channel, t.as_deref()).await?;
            s.call(
                Method::DELETE,
                &format!("/channels/{c}/connections/{d}"),
                None,
            )
            .await?;
            eprintln!("disconnected");
            Ok(ExitCode::SUCCESS)
        }
        Command::Connections(a) => {
            let t = tenant_id(s, a.tenant.as_deref()).await?;
            let path = match (&a.device, &a.channel) {
                (Some(d), _) => format!(
                    "/devices/{}/connections",
                    resolve(s, "device", "/devices", "name", d, t.as_deref()).await?
                ),
                (None, Some(c)) => format!(
                    "/channels/{}/connections",
                    resolve(s, "channel", "/channels", "name", c, t.as_deref()).await?
                ),
                (None, None) => bail!("pass --device or --channel"),
            };
            list(s, &path, vec![], a.paging, Kind::Connection, g).await
        }
        Command::Login(_)
        | Command::Logout
        | Command::Whoami
        | Command::Pki(_)
        | Command::ClaimCode(_) => {
            unreachable!("handled by the caller")
        }
    }
}

async fn tenant(s: &mut Session, c: TenantCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        TenantCommand::Create {
            name,
            parent,
            labels,
        } => {
            let parent = tenant_id(s, parent.as_deref()).await?;
            let mut body = object(vec![
                ("name", Some(json!(name))),
                ("parent_id", parent.map(Value::from)),
            ]);
            labels.into_body(&mut body);
            show(
                s,
                Method::POST,
                "/tenants",
                Some(Value::Object(body)),
                Kind::Tenant,
                f,
            )
            .await
        }
        TenantCommand::List {
            parent,
            name,
            tag,
            paging,
        } => {
            let parent = tenant_id(s, parent.as_deref()).await?;
            list(
                s,
                "/tenants",
                vec![("parent_id", parent), ("name", name), ("tag", tag)],
                paging,
                Kind::Tenant,
                g,
            )
            .await
        }
        TenantCommand::Get { tenant } => {
            let id = resolve(s, "tenant", "/tenants", "name", &tenant, None).await?;
            show(
                s,
                Method::GET,
                &format!("/tenants/{id}"),
                None,
                Kind::Tenant,
                f,
            )
            .await
        }
        TenantCommand::Update {
            tenant,
            name,
            labels,
        } => {
            let id = resolve(s, "tenant", "/tenants", "name", &tenant, None).await?;
            let mut body = object(vec![("name", name.map(Value::from))]);
            labels.into_body(&mut body);
            show(
                s,
                Method::PATCH,
                &format!("/tenants/{id}"),
                Some(Value::Object(body)),
                Kind::Tenant,
                f,
            )
            .await
        }
        TenantCommand::Delete { tenant } => {
            let id = resolve(s, "tenant", "/tenants", "name", &tenant, None).await?;
            done(
                s,
                Method::DELETE,
                &format!("/tenants/{id}"),
                format!("tenant {id} deleted"),
            )
            .await
        }
    }
}

async fn user(s: &mut Session, c: UserCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        UserCommand::Create {
            username,
            role,
            tenant,
            display_name,
            password_stdin,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let password = read_password(
                password_stdin,
                "password for the new user: ",
                !password_stdin,
            )?;
            let body = object(vec![
                ("username", Some(json!(username))),
                ("password", Some(json!(password))),
                ("role", Some(json!(role.as_str()))),
                ("display_name", display_name.map(Value::from)),
                ("tenant_id", t.map(Value::from)),
            ]);
            show(
                s,
                Method::POST,
                "/users",
                Some(Value::Object(body)),
                Kind::User,
                f,
            )
            .await
        }
        UserCommand::List {
            tenant,
            name,
            paging,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            list(
                s,
                "/users",
                vec![("tenant_id", t), ("name", name)],
                paging,
                Kind::User,
                g,
            )
            .await
        }
        UserCommand::Get { user, tenant } => {
            let id = resolve_user(s, &user, tenant.as_deref()).await?;
            show(s, Method::GET, &format!("/users/{id}"), None, Kind::User, f).await
        }
        UserCommand::Update {
            user,
            tenant,
            role,
            display_name,
            disable,
            enable,
            password,
            password_stdin,
        } => {
            let id = resolve_user(s, &user, tenant.as_deref()).await?;
            let mut body = object(vec![
                ("role", role.map(|r| json!(r.as_str()))),
                ("display_name", display_name.map(Value::from)),
                ("disabled", (disable || enable).then_some(json!(disable))),
            ]);
            if password {
                let me = s.get("/auth/whoami").await?;
                let new = read_password(password_stdin, "new password: ", !password_stdin)?;
                body.insert("password".into(), json!(new));
                if me["id"].as_str() == Some(id.as_str()) {
                    let current = read_password(password_stdin, "current password: ", false)?;
                    body.insert("current_password".into(), json!(current));
                }
            }
            show(
                s,
                Method::PATCH,
                &format!("/users/{id}"),
                Some(Value::Object(body)),
                Kind::User,
                f,
            )
            .await
        }
        UserCommand::Delete { user, tenant } => {
            let id = resolve_user(s, &user, tenant.as_deref()).await?;
            done(
                s,
                Method::DELETE,
                &format!("/users/{id}"),
                format!("user {id} deleted"),
            )
            .await
        }
        UserCommand::RevokeSessions { user, tenant } => {
            let id = resolve_user(s, &user, tenant.as_deref()).await?;
            done(
                s,
                Method::POST,
                &format!("/users/{id}/sessions/revoke"),
                format!("every session of user {id} has ended"),
            )
            .await
        }
    }
}

async fn resolve_user(s: &mut Session, user: &str, tenant: Option<&str>) -> anyhow::Result<String> {
    let t = tenant_id(s, tenant).await?;
    resolve(s, "user", "/users", "username", user, t.as_deref()).await
}

pub(super) async fn resolve_in(
    s: &mut Session,
    what: &str,
    path: &str,
    given: &str,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    let t = tenant_id(s, tenant).await?;
    resolve(s, what, path, "name", given, t.as_deref()).await
}

async fn device(s: &mut Session, c: DeviceCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        DeviceCommand::Create {
            name,
            tenant,
            labels,
            state,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let mut body = object(vec![
                ("name", Some(json!(name))),
                ("tenant_id", t.map(Value::from)),
                ("state", state.map(|v| json!(v.as_str()))),
            ]);
            labels.into_body(&mut body);
            show(
                s,
                Method::POST,
                "/devices",
                Some(Value::Object(body)),
                Kind::Device,
                f,
            )
            .await
        }
        DeviceCommand::List {
            tenant,
            name,
            tag,
            state,
            paging,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let pairs = vec![
                ("tenant_id", t),
                ("name", name),
                ("tag", tag),
                ("state", state.map(|v| v.as_str().to_owned())),
            ];
            list(s, "/devices", pairs, paging, Kind::Device, g).await
        }
        DeviceCommand::Get { device, tenant } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            show(
                s,
                Method::GET,
                &format!("/devices/{id}"),
                None,
                Kind::Device,
                f,
            )
            .await
        }
        DeviceCommand::Update {
            device,
            tenant,
            name,
            labels,
            state,
        } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            let mut body = object(vec![
                ("name", name.map(Value::from)),
                ("state", state.map(|v| json!(v.as_str()))),
            ]);
            labels.into_body(&mut body);
            show(
                s,
                Method::PATCH,
                &format!("/devices/{id}"),
                Some(Value::Object(body)),
                Kind::Device,
                f,
            )
            .await
        }
        DeviceCommand::Delete { device, tenant } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            done(
                s,
                Method::DELETE,
                &format!("/devices/{id}"),
                format!("device {id} deleted"),
            )
            .await
        }
        DeviceCommand::Key(DeviceKeyCommand::Create {
            device,
            tenant,
            expires_in_days,
            replaces,
        }) => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            let body = Value::Object(object(vec![
                ("expires_in_days", expires_in_days.map(Value::from)),
                ("replaces", replaces.map(|r| json!(r))),
            ]));
            let v = s
                .call(Method::POST, &format!("/devices/{id}/keys"), Some(body))
                .await?;
            print_issued(&v, "device key", g);
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Key(DeviceKeyCommand::List { device, tenant }) => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            show(
                s,
                Method::GET,
                &format!("/devices/{id}/keys"),
                None,
                Kind::DeviceKey,
                f,
            )
            .await
        }
        DeviceCommand::Key(DeviceKeyCommand::Revoke {
            device,
            key_id,
            tenant,
        }) => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            s.call(
                Method::DELETE,
                &format!("/devices/{id}/keys/{key_id}"),
                None,
            )
            .await?;
            eprintln!("device key {key_id} revoked");
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Cert(c) => certificates::run(s, c, g).await,
        DeviceCommand::Import(a) => import::run(s, a, g).await,
        DeviceCommand::Claim { code, name, tenant } => {
            claims::claim(s, code, name, tenant, g).await
        }
    }
}

async fn channel(s: &mut Session, c: ChannelCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        ChannelCommand::Create {
            name,
            tenant,
            labels,
            policy,
            retention_days,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let mut body = object(vec![
                ("name", Some(json!(name))),
                ("tenant_id", t.map(Value::from)),
                ("payload_policy", policy.map(|p| json!(p.as_str()))),
                ("retention_days", retention_days.map(Value::from)),
            ]);
            labels.into_body(&mut body);
            show(
                s,
                Method::POST,
                "/channels",
                Some(Value::Object(body)),
                Kind::Channel,
                f,
            )
            .await
        }
        ChannelCommand::List {
            tenant,
            name,
            tag,
            paging,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            list(
                s,
                "/channels",
                vec![("tenant_id", t), ("name", name), ("tag", tag)],
                paging,
                Kind::Channel,
                g,
            )
            .await
        }
        ChannelCommand::Get { channel, tenant } => {
            let id = resolve_in(s, "channel", "/channels", &channel, tenant.as_deref()).await?;
            show(
                s,
                Method::GET,
                &format!("/channels/{id}"),
                None,
                Kind::Channel,
                f,
            )
            .await
        }
        ChannelCommand::Update {
            channel,
            tenant,
            name,
            labels,
            policy,
            retention_days,
        } => {
            let id = resolve_in(s, "channel", "/channels", &channel, tenant.as_deref()).await?;
            let mut body = object(vec![
                ("name", name.map(Value::from)),
                ("payload_policy", policy.map(|p| json!(p.as_str()))),
                ("retention_days", retention_days.map(Value::from)),
            ]);
            labels.into_body(&mut body);
            show(
                s,
                Method::PATCH,
                &format!("/channels/{id}"),
                Some(Value::Object(body)),
                Kind::Channel,
                f,
            )
            .await
        }
        ChannelCommand::Delete { channel, tenant } => {
            let id = resolve_in(s, "channel", "/channels", &channel, tenant.as_deref()).await?;
            done(
                s,
                Method::DELETE,
                &format!("/channels/{id}"),
                format!("channel {id} deleted"),
            )
            .await
        }
    }
}

async fn apikey(s: &mut Session, c: ApiKeyCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        ApiKeyCommand::Create {
            name,
            role,
            tenant,
            expires_in_days,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let body = object(vec![
                ("name", Some(json!(name))),
                ("role", Some(json!(role.as_str()))),
                ("tenant_id", t.map(Value::from)),
                ("expires_in_days", expires_in_days.map(Value::from)),
            ]);
            let v = s
                .call(Method::POST, "/apikeys", Some(Value::Object(body)))
                .await?;
            print_issued(&v, "API key", g);
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::List {
            tenant,
            name,
            paging,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            list(
                s,
                "/apikeys",
                vec![("tenant_id", t), ("name", name)],
                paging,
                Kind::ApiKey,
                g,
            )
            .await
        }
        ApiKeyCommand::Get { id } => {
            show(
                s,
                Method::GET,
                &format!("/apikeys/{id}"),
                None,
                Kind::ApiKey,
                f,
            )
            .await
        }
        ApiKeyCommand::Revoke { id } => {
            done(
                s,
                Method::DELETE,
                &format!("/apikeys/{id}"),
                format!("API key {id} revoked"),
            )
            .await
        }
    }
}

/// `moat audit list`.
pub(crate) async fn audit_list(a: AuditListArgs, g: &Global) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(g)?;
    let t = tenant_id(&mut s, a.tenant.as_deref()).await?;
    let outcome = a.outcome.map(|o| {
        match o {
            OutcomeArg::Success => "success",
            OutcomeArg::Denied => "denied",
            OutcomeArg::Failure => "failure",
        }
        .to_owned()
    });
    let pairs = vec![
        ("tenant_id", t),
        ("actor", a.actor),
        ("action", a.action),
        ("target", a.target),
        ("outcome", outcome),
        ("from", a.from),
        ("to", a.to),
    ];
    list(&mut s, "/audit", pairs, a.paging, Kind::Audit, g).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_carry_only_what_is_set_and_are_escaped() {
        assert_eq!(with_query("/devices", &[("name", None)]), "/devices");
        assert_eq!(
            with_query(
                "/devices",
                &[
                    ("name", Some("a b&c".into())),
                    ("tag", None),
                    ("limit", Some("5".into()))
                ]
            ),
            "/devices?name=a+b%26c&limit=5"
        );
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(parse_object(r#"{"a":1}"#).is_ok());
        assert!(parse_object("[1]").is_err());
        assert!(parse_object("{").is_err());
    }
}
