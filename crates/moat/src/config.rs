//! The server's configuration: one typed struct, read from a TOML file, then
//! `MOAT_*` environment variables, then command-line flags — a later source
//! wins. Defaults are the secure ones: TLS only, secrets in owner-only files.
//!
//! The doc comments of [`Config`]'s fields are the configuration reference
//! (README's table is taken from them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Where Moat keeps its database, master key and CA certificate.
    pub(crate) data_dir: PathBuf,
    /// HTTPS (REST API) listen address.
    pub(crate) listen: SocketAddr,
    /// Also serve plain HTTP on `plain_listen`. For development only.
    pub(crate) insecure_dev: bool,
    /// Plain HTTP listen address, used only with `insecure_dev`.
    pub(crate) plain_listen: SocketAddr,
    /// The master key file; default `<data_dir>/master.key`. The
    /// `MOAT_MASTER_KEY` variable (64 hex digits or base64) overrides it.
    pub(crate) master_key_file: Option<PathBuf>,
    /// Host names and IP addresses the server certificate is issued for.
    pub(crate) server_names: Vec<String>,
    /// Lifetime of access tokens.
    #[serde(with = "humantime_serde")]
    pub(crate) access_token_ttl: Duration,
    /// Lifetime of refresh tokens (each use rotates them).
    #[serde(with = "humantime_serde")]
    pub(crate) refresh_token_ttl: Duration,
    /// Open connections per listener; beyond it, new ones wait.
    pub(crate) max_connections: usize,
    /// Log format on stderr: `text` or `json`.
    pub(crate) log_format: LogFormat,
    /// Default lifetime of device certificates Moat issues.
    #[serde(with = "humantime_serde")]
    pub(crate) device_cert_validity: Duration,
    /// How long a renewed device certificate or rotated device key keeps
    /// working beside its successor.
    #[serde(with = "humantime_serde")]
    pub(crate) rotation_overlap: Duration,
    /// How often WebSockets are pinged; a client that has not answered by
    /// the next ping is gone, and credentials and rights are checked again.
    #[serde(with = "humantime_serde")]
    pub(crate) websocket_ping_interval: Duration,
    /// MQTT over TLS listen address (client certificates, or device id and
    /// device key as user name and password).
    pub(crate) mqtt_listen: SocketAddr,
    /// Plain MQTT listen address, used only with `insecure_dev`.
    pub(crate) mqtt_plain_listen: SocketAddr,
    /// Development only, and only with `insecure_dev`: anonymous MQTT
    /// clients and topics outside `channels/…` and `devices/…` (routed
    /// between MQTT clients, never stored), so that third-party MQTT
    /// conformance suites run unchanged.
    pub(crate) mqtt_open_topics: bool,
    /// Open MQTT connections over all MQTT listeners.
    pub(crate) mqtt_max_connections: usize,
    /// The largest MQTT packet a client may send, in bytes (announced as
    /// Maximum Packet Size).
    pub(crate) mqtt_max_packet_size: u32,
    /// QoS 1 and 2 messages a client may have unacknowledged toward the
    /// broker (Receive Maximum); more is DISCONNECT 0x93.
    pub(crate) mqtt_receive_maximum: u16,
    /// QoS 1 and 2 messages the broker keeps unacknowledged toward one
    /// client (the client's own Receive Maximum may lower it).
    pub(crate) mqtt_max_inflight: u16,
    /// Messages queued per MQTT session, online or offline; beyond it new
    /// ones are dropped and counted (`moat_mqtt_dropped_total`).
    pub(crate) mqtt_max_queued: usize,
    /// The longest session expiry granted to a persistent MQTT session.
    #[serde(with = "humantime_serde")]
    pub(crate) mqtt_max_session_expiry: Duration,
    /// The longest MQTT keep-alive granted, in seconds; a client asking
    /// more (or none) is told this Server Keep Alive.
    pub(crate) mqtt_max_keep_alive: u16,
    /// PUBLISHes per second one MQTT client may send (0: no limit); beyond
    /// it the broker reads from that client more slowly.
    pub(crate) mqtt_publish_rate: u32,
    /// CoAP over DTLS listen address (UDP; pre-shared keys or client
    /// certificates).
    pub(crate) coap_listen: SocketAddr,
    /// Plain CoAP listen address (UDP), used only with `insecure_dev`.
    pub(crate) coap_plain_listen: SocketAddr,
    /// CoAP peers (addresses with a session) at most, over both listeners.
    pub(crate) coap_max_peers: usize,
    /// DTLS handshakes in progress at most; more ClientHellos are ignored.
    pub(crate) coap_max_handshakes: usize,
    /// A CoAP peer silent this long is forgotten (its DTLS session too).
    #[serde(with = "humantime_serde")]
    pub(crate) coap_idle_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("moat-data"),
            listen: "0.0.0.0:8443".parse().expect("a valid address"),
            insecure_dev: false,
            plain_listen: "127.0.0.1:8080".parse().expect("a valid address"),
            master_key_file: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_connections: 10_000,
            log_format: LogFormat::Text,
            device_cert_validity: Duration::from_secs(365 * 24 * 3600),
            rotation_overlap: Duration::from_secs(7 * 24 * 3600),
            websocket_ping_interval: Duration::from_secs(30),
            mqtt_listen: "0.0.0.0:8883".parse().expect("a valid address"),
            mqtt_plain_listen: "127.0.0.1:1883".parse().expect("a valid address"),
            mqtt_open_topics: false,
            mqtt_max_connections: 100_000,
            mqtt_max_packet_size: moat_mqtt::BrokerConfig::default().max_packet_size,
            mqtt_receive_maximum: 100,
            mqtt_max_inflight: 100,
            mqtt_max_queued: 1000,
            mqtt_max_session_expiry: Duration::from_secs(24 * 3600),
            mqtt_max_keep_alive: 1200,
            mqtt_publish_rate: 1000,
            coap_listen: "0.0.0.0:5684".parse().expect("a valid address"),
            coap_plain_listen: "127.0.0.1:5683".parse().expect("a valid address"),
            coap_max_peers: 100_000,
            coap_max_handshakes: 1024,
            coap_idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The keys `MOAT_*` variables may set: the fields of [`Config`]. Other
/// `MOAT_` variables (the CLI's, secrets) are not configuration.
const FIELDS: &[&str] = &[
    "data_dir",
    "listen",
    "insecure_dev",
    "plain_listen",
    "master_key_file",
    "server_names",
    "access_token_ttl",
    "refresh_token_ttl",
    "max_connections",
    "log_format",
    "device_cert_validity",
    "rotation_overlap",
    "websocket_ping_interval",
    "mqtt_listen",
    "mqtt_plain_listen",
    "mqtt_open_topics",
    "mqtt_max_connections",
    "mqtt_max_packet_size",
    "mqtt_receive_maximum",
    "mqtt_max_inflight",
    "mqtt_max_queued",
    "mqtt_max_session_expiry",
    "mqtt_max_keep_alive",
    "mqtt_publish_rate",
    "coap_listen",
    "coap_plain_listen",
    "coap_max_peers",
    "coap_max_handshakes",
    "coap_idle_timeout",
];

/// Flags of `moat serve`; each one, when given, wins over file and environment.
#[derive(clap::Args, Debug, Default, Serialize)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "MOAT_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Where Moat keeps its database, master key and CA certificate [default: ./moat-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data_dir: Option<PathBuf>,
    /// HTTPS listen address [default: 0.0.0.0:8443].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen: Option<SocketAddr>,
    /// Also serve plain, unencrypted HTTP. Never in production.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) insecure_dev: bool,
    /// Plain HTTP listen address with --insecure-dev [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plain_listen: Option<SocketAddr>,
    /// MQTT over TLS listen address [default: 0.0.0.0:8883].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// Plain MQTT listen address with --insecure-dev [default: 127.0.0.1:1883].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_plain_listen: Option<SocketAddr>,
    /// With --insecure-dev only: anonymous MQTT clients and arbitrary
    /// topics, for MQTT conformance suites. Never in production.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) mqtt_open_topics: bool,
    /// CoAP over DTLS listen address (UDP) [default: 0.0.0.0:5684].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) coap_listen: Option<SocketAddr>,
    /// Plain CoAP listen address (UDP) with --insecure-dev [default: 127.0.0.1:5683].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) coap_plain_listen: Option<SocketAddr>,
    /// The master key file [default: <data-dir>/master.key].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// A host name or IP address for the server certificate (repeatable).
    #[arg(long = "server-name")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) server_names: Vec<String>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_format: Option<LogFormat>,
}

impl Config {
    /// The broker's settings.
    pub(crate) fn broker(&self) -> moat_mqtt::BrokerConfig {
        moat_mqtt::BrokerConfig {
            max_connections: self.mqtt_max_connections,
            max_packet_size: self.mqtt_max_packet_size,
            receive_maximum: self.mqtt_receive_maximum,
            max_inflight: self.mqtt_max_inflight,
            max_queued: self.mqtt_max_queued,
            max_session_expiry: self.mqtt_max_session_expiry,
            max_keep_alive: self.mqtt_max_keep_alive,
            publish_rate: self.mqtt_publish_rate,
            open_topics: self.mqtt_open_topics && self.insecure_dev,
            ..moat_mqtt::BrokerConfig::default()
        }
    }

    /// The CoAP adapter's settings.
    pub(crate) fn coap(&self) -> moat_coap::CoapConfig {
        moat_coap::CoapConfig {
            max_peers: self.coap_max_peers,
            max_handshakes: self.coap_max_handshakes,
            idle_timeout: self.coap_idle_timeout,
            ..moat_coap::CoapConfig::default()
        }
    }

    /// Defaults, then the file, then the environment, then the flags.
    pub(crate) fn load(args: &ServeArgs) -> Result<Self, Box<figment::Error>> {
        Self::figment(args, Env::prefixed("MOAT_").only(FIELDS))
            .extract()
            .map_err(Box::new)
    }

    fn figment(args: &ServeArgs, env: Env) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config {
            f = f.merge(Toml::file_exact(path));
        }
        f.merge(env).merge(Serialized::defaults(args))
    }

    pub(crate) fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

#[cfg(test)]
// figment's `Jail` closures return its (large) error type; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn fields_list_matches_the_struct() {
        let v = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut fields: Vec<_> = FIELDS.iter().map(|s| s.to_string()).collect();
        fields.sort();
        assert_eq!(keys, fields);
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("moat.toml", "listen = \"127.0.0.1:1000\"\ndata_dir = \"from-file\"\naccess_token_ttl = \"15m\"\n")?;
            jail.set_env("MOAT_LISTEN", "127.0.0.1:2000");
            jail.set_env("MOAT_URL", "https://not-config.example");
            let mut args = ServeArgs {
                config: Some("moat.toml".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&args).map_err(|e| *e)?;
            assert_eq!(c.listen.port(), 2000, "env beats file");
            assert_eq!(c.data_dir, PathBuf::from("from-file"));
            assert_eq!(c.access_token_ttl, Duration::from_secs(900));
            assert!(!c.insecure_dev);
            args.listen = Some("127.0.0.1:3000".parse().unwrap());
            assert_eq!(
                Config::load(&args).map_err(|e| *e)?.listen.port(),
                3000,
                "flags beat env"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("moat.toml", "lsiten = \"127.0.0.1:1000\"\n")?;
            let args = ServeArgs {
                config: Some("moat.toml".into()),
                ..ServeArgs::default()
            };
            assert!(Config::load(&args).is_err());
            Ok(())
        });
    }
}
