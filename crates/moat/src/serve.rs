//! `moat serve`: wires the store, the key material and the HTTP adapter,
//! binds the listeners, and runs until SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use moat_core::audit::AuditChain;
use moat_core::message::MessageStore;
use moat_core::sessions::SessionRegistry;
use moat_core::store::Store;
use moat_http::pki::{Pki, PkiSettings};
use moat_http::server::{self, ServeOptions};
use moat_http::{AppState, Messaging, Settings};
use moat_pki::master::{MasterKey, Purpose};
use moat_pki::trust::DeviceVerifier;
use moat_store::{SqliteMessageStore, SqliteStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, LogFormat, ServeArgs};
use crate::{bootstrap, mqtt, retention};

pub(crate) const DB_FILE: &str = "moat.db";
/// Messages live in their own file (ADR 004).
pub(crate) const MESSAGES_FILE: &str = "messages.db";

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args).context("reading the configuration")?;
    if config.websocket_ping_interval < Duration::from_millis(100) {
        bail!("websocket_ping_interval must be at least 100ms");
    }
    if config.mqtt_open_topics && !config.insecure_dev {
        bail!("mqtt_open_topics is for development only and needs --insecure-dev");
    }
    init_logging(config.log_format);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    restrict_dir(&config.data_dir)?;

    let master = load_master_key(&config, true)?;
    let store = open_store(&config, &master)?;
    let store: Arc<dyn Store> = Arc::new(store);

    bootstrap::admin(store.as_ref()).await?;
    let sessions = SessionRegistry::new();
    let pki_settings = PkiSettings {
        device_cert_validity: chrono::Duration::from_std(config.device_cert_validity)?,
        rotation_overlap: chrono::Duration::from_std(config.rotation_overlap)?,
        server_names: config.server_names.clone(),
        ..PkiSettings::default()
    };
    let pki = Pki::open(
        Arc::clone(&store),
        Arc::clone(&sessions),
        master.derive(Purpose::Wrapping),
        pki_settings,
    )
    .await
    .context("loading the certificate authority")?;
    bootstrap::write_ca_pem(&config, pki.root_pem())?;
    let verifier = DeviceVerifier::new(Arc::clone(&pki.index), false);
    let tls = moat_pki::tls::listener_config(
        Arc::clone(&pki.server_cert),
        verifier,
        &[b"h2", b"http/1.1"],
    )?;
    // No ALPN list for MQTT: clients that offer a name of their own (cloud
    // SDKs send `x-amzn-mqtt-ca`) would otherwise be refused.
    let mqtt_tls = moat_pki::tls::listener_config(
        Arc::clone(&pki.server_cert),
        DeviceVerifier::new(Arc::clone(&pki.index), false),
        &[],
    )?;
    tokio::spawn(renew_server_cert(Arc::clone(&pki)));

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics are off"))
        .ok();
    let settings = Settings {
        access_token_ttl: config.access_token_ttl,
        refresh_token_ttl: config.refresh_token_ttl,
        websocket_ping: config.websocket_ping_interval,
    };
    let messages = open_messages(&config, &master)?;
    let message_store: Arc<dyn MessageStore> = Arc::clone(&messages) as _;
    let bus = moat_bus::LocalBus::new(Arc::clone(&message_store));
    let broker = moat_mqtt::Broker::new(
        config.broker(),
        Arc::clone(&store),
        Arc::clone(&bus) as Arc<dyn moat_core::message::bus::Bus>,
        Arc::clone(&sessions),
    );
    let retained = broker
        .keep_retained(Arc::clone(&messages) as _)
        .await
        .context("loading the MQTT retained messages")?;
    tracing::info!(retained, "MQTT retained messages loaded");
    let restored = broker
        .keep_sessions(messages)
        .await
        .context("loading the MQTT persistent sessions")?;
    tracing::info!(restored, "MQTT persistent sessions restored");
    broker.start();
    tokio::spawn(retention::run(
        Arc::clone(&store),
        Arc::clone(&message_store),
        Arc::clone(&broker),
        RETENTION_EVERY,
    ));
    let coap = Arc::new(moat_coap::Coap {
        config: config.coap(),
        store: Arc::clone(&store),
        bus: Arc::clone(&bus) as Arc<dyn moat_core::message::bus::Bus>,
        sessions: Arc::clone(&sessions),
        credentials: Arc::new(crate::coap::PlatformCredentials {
            store: Arc::clone(&store),
            pki: Arc::clone(&pki),
        }),
    });
    let (server_chain, server_key) = pki
        .server_identity_pem()
        .await
        .context("loading the server certificate for DTLS")?;
    let dtls = moat_coap::dtls::DtlsContext::new(&moat_coap::dtls::ServerIdentity {
        chain_pem: server_chain,
        key_pem: zeroize::Zeroizing::new(server_key),
    })
    .context("setting up DTLS")?;
    let dtls = Arc::new(dtls);
    tokio::spawn(follow_server_cert_for_dtls(
        Arc::clone(&pki),
        Arc::clone(&dtls),
    ));
    let state = AppState::new(
        store,
        Arc::clone(&sessions),
        Arc::clone(&pki),
        Messaging {
            bus,
            store: message_store,
        },
        master.derive(Purpose::AccessTokens),
        settings,
        metrics,
    );
    drop(master);
    let (stop_tx, stop_rx) = watch::channel(false);
    let app =
        moat_http::app(state).merge(mqtt::websocket_router(Arc::clone(&broker), stop_rx.clone()));

    let opts = ServeOptions {
        tls: Some(tls),
        max_connections: config.max_connections,
        handshake_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
        pki: Some(Arc::clone(&pki)),
        sessions: Some(sessions),
    };
    let mut servers = tokio::task::JoinSet::new();
    let mqtt_opts = moat_mqtt::server::ListenerOptions {
        tls: Some(mqtt_tls),
        identify: Some(Arc::new(mqtt::PkiIdentify(Arc::clone(&pki)))),
        handshake_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
    };
    if config.insecure_dev {
        let plain = TcpListener::bind(config.mqtt_plain_listen)
            .await
            .with_context(|| format!("binding plain MQTT on {}", config.mqtt_plain_listen))?;
        let addr = plain.local_addr()?;
        eprintln!("\n  !!! INSECURE: plain, unencrypted MQTT is on at {addr} (--insecure-dev).");
        if config.mqtt_open_topics {
            eprintln!("  !!! --mqtt-open-topics: anonymous MQTT clients may use any topic.");
        }
        tracing::warn!(%addr, open_topics = config.mqtt_open_topics, "insecure plain MQTT listener is on");
        println!("mqtt plain listening on {addr}");
        let opts = moat_mqtt::server::ListenerOptions {
            tls: None,
            identify: None,
            ..mqtt_opts.clone()
        };
        servers.spawn(moat_mqtt::server::run(
            plain,
            Arc::clone(&broker),
            opts,
            stop_rx.clone(),
        ));
    }
    let mqtt_listener = TcpListener::bind(config.mqtt_listen)
        .await
        .with_context(|| format!("binding MQTT on {}", config.mqtt_listen))?;
    let addr = mqtt_listener.local_addr()?;
    println!("mqtt listening on {addr}");
    servers.spawn(moat_mqtt::server::run(
        mqtt_listener,
        Arc::clone(&broker),
        mqtt_opts,
        stop_rx.clone(),
    ));
    if config.insecure_dev {
        let plain = moat_coap::bind(config.coap_plain_listen)
            .with_context(|| format!("binding plain CoAP on {}", config.coap_plain_listen))?;
        let addr = plain.local_addr()?;
        eprintln!("\n  !!! INSECURE: plain, unencrypted CoAP is on at {addr} (--insecure-dev).");
        tracing::warn!(%addr, "insecure plain CoAP listener is on");
        println!("coap plain listening on {addr}");
        servers.spawn(moat_coap::run(
            plain,
            Arc::clone(&coap),
            moat_coap::Security::Plain,
            stop_rx.clone(),
        ));
    }
    let coap_socket = moat_coap::bind(config.coap_listen)
        .with_context(|| format!("binding CoAP on {}", config.coap_listen))?;
    let addr = coap_socket.local_addr()?;
    println!("coap listening on {addr}");
    servers.spawn(moat_coap::run(
        coap_socket,
        coap,
        moat_coap::Security::Dtls(dtls),
        stop_rx.clone(),
    ));
    if config.insecure_dev {
        let plain = TcpListener::bind(config.plain_listen)
            .await
            .with_context(|| format!("binding plain HTTP on {}", config.plain_listen))?;
        let addr = plain.local_addr()?;
        eprintln!(
            "\n  !!! INSECURE: plain, unencrypted HTTP is on at http://{addr} (--insecure-dev)."
        );
        eprintln!(
            "  !!! Credentials and data cross the network in the clear. Never use this in production.\n"
        );
        tracing::warn!(%addr, "insecure plain HTTP listener is on");
        println!("http listening on {addr}");
        let opts = ServeOptions {
            tls: None,
            pki: None,
            ..opts.clone()
        };
        servers.spawn(server::run(
            plain,
            app.clone(),
            opts,
            stopped(stop_rx.clone()),
        ));
    }
    let https = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding HTTPS on {}", config.listen))?;
    let addr = https.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "moat is serving");
    println!("https listening on {addr}");
    servers.spawn(server::run(https, app, opts, stopped(stop_rx)));

    shutdown_signal().await;
    tracing::info!("shutting down: no new connections; draining open ones");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    let saved = async {
        broker.flush_retained().await;
        broker.save_sessions().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), saved)
        .await
        .is_err()
    {
        tracing::warn!("MQTT retained messages or sessions were still being written at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Checks twice a day whether the server certificate is due, and renews it
/// in place: new handshakes present the new one, no restart needed.
async fn renew_server_cert(pki: Arc<Pki>) {
    let mut every = tokio::time::interval(Duration::from_secs(12 * 3600));
    every.tick().await;
    loop {
        every.tick().await;
        match pki.renew_server_cert(false).await {
            Ok(true) => tracing::info!("renewed the server certificate"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "could not renew the server certificate"),
        }
    }
}

/// How often DTLS compares its server certificate with the one the TLS
/// listeners present (renewed on schedule, or at once through the API).
const DTLS_CERT_CHECK: Duration = Duration::from_secs(60);

/// DTLS cannot use the rustls resolver the TLS listeners read the server
/// certificate from: when the resolver's certificate changes, DTLS is given
/// it (read from the store then, not on every check).
async fn follow_server_cert_for_dtls(pki: Arc<Pki>, dtls: Arc<moat_coap::dtls::DtlsContext>) {
    let mut every = tokio::time::interval(DTLS_CERT_CHECK);
    every.tick().await;
    loop {
        every.tick().await;
        if dtls.certificate_der() == Some(pki.server_cert.leaf_der()) {
            continue;
        }
        let (chain_pem, key_pem) = match pki.server_identity_pem().await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "could not read the server certificate for DTLS");
                continue;
            }
        };
        let identity = moat_coap::dtls::ServerIdentity {
            chain_pem,
            key_pem: zeroize::Zeroizing::new(key_pem),
        };
        match dtls.set_identity(&identity) {
            Ok(()) => tracing::info!("DTLS presents the renewed server certificate"),
            Err(e) => {
                tracing::error!(error = %e, "could not give DTLS the renewed server certificate")
            }
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The master key from `MOAT_MASTER_KEY` or its file; the file is created
/// only when `create` (the server's first start), never by other commands.
pub(crate) fn load_master_key(config: &Config, create: bool) -> anyhow::Result<MasterKey> {
    if let Ok(text) = std::env::var("MOAT_MASTER_KEY") {
        return MasterKey::parse(&text).context("MOAT_MASTER_KEY");
    }
    let path = config.master_key_path();
    if !create && !path.exists() {
        bail!(
            "no master key at {} (set --master-key-file, --data-dir or MOAT_MASTER_KEY)",
            path.display()
        );
    }
    let (key, created) = MasterKey::load_or_create(&path)?;
    if created {
        tracing::warn!(path = %path.display(), "created a new master key; back it up: without it the data cannot be read");
    }
    Ok(key)
}

pub(crate) fn open_store(config: &Config, master: &MasterKey) -> anyhow::Result<SqliteStore> {
    let path = config.data_dir.join(DB_FILE);
    match SqliteStore::open(
        &path,
        &master.derive(Purpose::Database),
        AuditChain::new(master.derive(Purpose::AuditChain)),
    ) {
        Ok(s) => Ok(s),
        Err(moat_core::store::StoreError::WrongKey) => bail!(
            "cannot open {}: the master key is wrong, or the file is not a Moat database (check --master-key-file / MOAT_MASTER_KEY)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn open_messages(config: &Config, master: &MasterKey) -> anyhow::Result<Arc<SqliteMessageStore>> {
    let path = config.data_dir.join(MESSAGES_FILE);
    match SqliteMessageStore::open(&path, &master.derive(Purpose::Messages)) {
        Ok(s) => Ok(Arc::new(s)),
        Err(moat_core::store::StoreError::WrongKey) => bail!(
            "cannot open {}: the master key is wrong, or the file is not a Moat message database",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}

#[cfg(not(unix))]
fn restrict_dir(_: &Path) -> anyhow::Result<()> {
    Ok(())
}
