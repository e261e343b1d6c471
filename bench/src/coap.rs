//! `moat-bench coap`: a CoAP over DTLS 1.2 load generator (issue 6), for
//! Moat and, as a reference on the same machine, libcoap's example server.
//!
//! - `post`: `--clients` devices, each with its own UDP socket and DTLS
//!   session (a pre-shared key from `setup --psk`), send confirmable
//!   requests one at a time (NSTART = 1: the next only once the answer is
//!   in), retransmitted after 2 s and 4 s more, lost 8 s after that.
//! - `observe`: `--observers` sessions register with Observe: 0, then one
//!   publisher sends confirmable requests at a paced `--rate`; each
//!   notification carries the publish's sequence number and send time, so
//!   the observers count deliveries and their latency. Confirmable
//!   notifications are acknowledged.
//!
//! Every client is a blocking socket on its own OS thread: simple, and a
//! thread per session is what a device is. OpenSSL runs over the connected
//! socket itself; a read timeout lets a thread notice the clock (and lets
//! OpenSSL retransmit its handshake flights). Figures are counted over
//! `--duration` seconds after `--warmup` and printed as `RESULT coap-post
//! …` or `RESULT coap-observe …`, then the generator's own CPU time
//! (`RESULT coap-client-cpu`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coap_lite::{ContentFormat, MessageClass, MessageType, Packet, RequestType};
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode, SslVersion};

mod client;
mod tally;

use client::{Client, Outcome};
use tally::Tally;

/// RFC 7252's ACK_TIMEOUT, without the random factor; doubled each time.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Retransmissions before a request counts as lost: 2 s, 4 s, then 8 s
/// more without an answer, 14 s in all (RFC 7252 allows 4, 62 s: longer
/// than a short run).
const MAX_RETRANSMIT: u32 = 2;
/// How long a blocked read waits before looking at the clock again.
const TICK: Duration = Duration::from_millis(250);
/// The path MTU assumed, as Moat's (IPv6's minimum).
const MTU: u32 = 1280;
/// How long observers keep listening after the last publish.
const DRAIN: Duration = Duration::from_secs(3);
/// OS thread stack: OpenSSL and a few buffers, a thousand threads.
const STACK: usize = 512 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Post,
    Observe,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Method {
    Post,
    Put,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// `post`: request rate and latency; `observe`: notification fan-out.
    #[arg(value_enum)]
    mode: Mode,
    /// The server's DTLS address, such as 127.0.0.1:5684.
    #[arg(long)]
    server: SocketAddr,
    /// Pre-shared keys, `identity key` a line (`moat-bench setup --psk`);
    /// client i uses line i modulo their number.
    #[arg(long)]
    psk: PathBuf,
    /// Where requests go (and, in `observe`, the publisher's), such as
    /// /channels/ID/messages/bench.
    #[arg(long)]
    path: String,
    /// `observe`: the resource observed, such as /channels/ID/messages.
    #[arg(long)]
    observe_path: Option<String>,
    /// The request method (libcoap's example server takes PUT, not POST).
    #[arg(long, value_enum, default_value = "post")]
    method: Method,
    /// `post`: concurrent clients, each its own DTLS session.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// `observe`: observer sessions.
    #[arg(long, default_value_t = 100)]
    observers: usize,
    /// `observe`: publishes a second.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Seconds counted.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds before counting.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// DTLS handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 16)]
    handshakes: usize,
    /// How long connecting every client may take, in seconds.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// OpenSSL cipher list offered (the server chooses).
    #[arg(
        long,
        default_value = "PSK-AES128-GCM-SHA256:PSK-AES128-CCM8:@SECLEVEL=0"
    )]
    ciphers: String,
    /// The local address to bind each client's socket to.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// A label for the RESULT line (moat, libcoap…).
    #[arg(long, default_value = "moat")]
    target: String,
}

pub(crate) fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=5000).contains(&a.clients), "--clients: 1 to 5000");
    anyhow::ensure!((1..=5000).contains(&a.observers), "--observers: 1 to 5000");
    anyhow::ensure!((1..=10_000).contains(&a.rate), "--rate: 1 to 10000");
    anyhow::ensure!((1..=600).contains(&a.duration), "--duration: 1 to 600");
    anyhow::ensure!(a.warmup <= 60, "--warmup: at most 60");
    anyhow::ensure!(
        (1..=1024).contains(&a.handshakes),
        "--handshakes: 1 to 1024"
    );
    let text =
        std::fs::read_to_string(&a.psk).with_context(|| format!("reading {}", a.psk.display()))?;
    let psks: Vec<Psk> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once(' ') {
            Some((id, key)) => Ok(Psk {
                identity: id.as_bytes().to_vec(),
                key: key.trim().as_bytes().to_vec(),
            }),
            None => bail!("{}: a line is not `identity key`", a.psk.display()),
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!psks.is_empty(), "{}: no keys", a.psk.display());
    let cpu = cpu_seconds();
    match a.mode {
        Mode::Post => post(&a, &psks)?,
        Mode::Observe => observe(&a, &psks)?,
    }
    if let (Some(before), Some(after)) = (cpu, cpu_seconds()) {
        println!(
            "RESULT coap-client-cpu target={} seconds={:.2}",
            a.target,
            after - before
        );
    }
    Ok(())
}

#[derive(Clone)]
struct Psk {
    identity: Vec<u8>,
    key: Vec<u8>,
}

/// What a run shares between its threads.
struct Run {
    server: SocketAddr,
    bind: SocketAddr,
    ciphers: String,
    method: RequestType,
    path: Vec<String>,
    gate: Gate,
    start: Start,
    warmup: Duration,
    duration: Duration,
}

impl Run {
    fn new(a: &Args, path: &str) -> anyhow::Result<Self> {
        // Checked once here, so that a bad list fails before any thread.
        SslContext::builder(SslMethod::dtls_client())?
            .set_cipher_list(&a.ciphers)
            .context("--ciphers")?;
        Ok(Self {
            server: a.server,
            bind: a.bind,
            ciphers: a.ciphers.clone(),
            method: match a.method {
                Method::Post => RequestType::Post,
                Method::Put => RequestType::Put,
            },
            path: segments(path),
            gate: Gate::new(a.handshakes),
            start: Start::default(),
            warmup: Duration::from_secs(a.warmup),
            duration: Duration::from_secs(a.duration),
        })
    }

    /// A client's connection, within the gate on handshakes in progress.
    fn connect(&self, psk: &Psk) -> anyhow::Result<(Client, Duration)> {
        let _permit = self.gate.enter();
        let t = Instant::now();
        let c = Client::connect(self.server, self.bind, psk, &self.ciphers)?;
        Ok((c, t.elapsed()))
    }
}

/// `post`: C clients, one confirmable request at a time each.
fn post(a: &Args, psks: &[Psk]) -> anyhow::Result<()> {
    let run = Arc::new(Run::new(a, &a.path)?);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..a.clients {
        let (run, psk, ready) = (
            Arc::clone(&run),
            psks[i % psks.len()].clone(),
            ready_tx.clone(),
        );
        threads.push(spawn(move || {
            let mut c = match run.connect(&psk) {
                Ok((c, took)) => {
                    let _ = ready.send(Ok((took, c.cipher)));
                    c
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}")));
                    return Ok(Tally::default());
                }
            };
            let Some(start) = run.start.wait() else {
                return Ok(Tally::default());
            };
            post_client(&run, &mut c, start)
        })?);
    }
    drop(ready_tx);
    let connect = connect_all(&run, &ready_rx, a.clients, a.connect_timeout)?;
    run.start.go(Instant::now());
    let mut tally = join(threads)?;
    let secs = run.duration.as_secs_f64();
    let ok = tally.ok();
    println!(
        "{}: {} clients, {secs:.0} s: {ok} answered 2.xx ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, \
         {} lost, {} retransmissions; answers {}",
        a.target,
        a.clients,
        ok as f64 / secs,
        tally.percentile(0.50) as f64 / 1000.0,
        tally.percentile(0.99) as f64 / 1000.0,
        tally.lost,
        tally.retransmits,
        tally.codes_text(),
    );
    println!(
        "RESULT coap-post target={} clients={} seconds={secs:.0} ok={ok} rps={:.0} p50_us={} \
         p99_us={} lost={} retransmits={} errors={} codes={} {connect}",
        a.target,
        a.clients,
        ok as f64 / secs,
        tally.percentile(0.50),
        tally.percentile(0.99),
        tally.lost,
        tally.retransmits,
        tally.answered() - ok,
        tally.codes_text(),
    );
    Ok(())
}

fn post_client(run: &Run, c: &mut Client, start: Instant) -> anyhow::Result<Tally> {
    let counted = start + run.warmup;
    let end = counted + run.duration;
    let mut tally = Tally::default();
    let mut n: u64 = 0;
    while Instant::now() < end {
        n += 1;
        let payload = format!("{{\"temp\":21.5,\"n\":{n}}}").into_bytes();
        let req = c.request(run.method, &run.path, None, Some(payload));
        let sent = Instant::now();
        let outcome = c.exchange(&req, end)?;
        if sent >= counted {
            tally.add(&outcome, sent);
        }
        if matches!(outcome, Outcome::Unfinished) {
            break;
        }
    }
    Ok(tally)
}

/// `observe`: S observers, one paced publisher.
fn observe(a: &Args, psks: &[Psk]) -> anyhow::Result<()> {
    let Some(observed) = &a.observe_path else {
        bail!("observe needs --observe-path");
    };
    let run = Arc::new(Run::new(a, &a.path)?);
    let observed = segments(observed);
    let rate = f64::from(a.rate);
    // Publishes before this sequence number fall in the warm-up.
    let first_counted = a.warmup * u64::from(a.rate);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..a.observers {
        let (run, psk, ready) = (
            Arc::clone(&run),
            psks[i % psks.len()].clone(),
            ready_tx.clone(),
        );
        let observed = observed.clone();
        threads.push(spawn(move || {
            let registered = run.connect(&psk).and_then(|(mut c, took)| {
                let req = c.request(RequestType::Get, &observed, Some(0), None);
                let limit = Instant::now() + Duration::from_secs(30);
                match c.exchange(&req, limit)? {
                    Outcome::Answer { packet, .. } if packet.get_observe_value().is_some() => {
                        Ok((c, took))
                    }
                    Outcome::Answer { packet, .. } => {
                        bail!("not registered: {}", packet.header.code)
                    }
                    _ => bail!("no answer to the registration"),
                }
            });
            let mut c = match registered {
                Ok((c, took)) => {
                    let _ = ready.send(Ok((took, c.cipher)));
                    c
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}")));
                    return Ok(Tally::default());
                }
            };
            let Some(start) = run.start.wait() else {
                return Ok(Tally::default());
            };
            let until = start + run.warmup + run.duration + DRAIN;
            observer(&mut c, until, start, first_counted)
        })?);
    }
    drop(ready_tx);
    // The publisher connects once every observer is in.
    let connected = connect_all(&run, &ready_rx, a.observers, a.connect_timeout)
        .and_then(|fields| Ok((run.connect(&psks[0])?.0, fields)));
    let (mut publisher, connect) = match connected {
        Ok(c) => c,
        Err(e) => {
            run.start.abort();
            let _ = join(threads);
            return Err(e);
        }
    };
    let start = Instant::now();
    run.start.go(start);
    let end = start + run.warmup + run.duration;
    let mut published = Tally::default();
    let mut sent_counted: u64 = 0;
    for seq in 0u64.. {
        let at = start + Duration::from_secs_f64(seq as f64 / rate);
        if at >= end {
            break;
        }
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = start.elapsed().as_micros();
        let payload = format!("{{\"seq\":{seq},\"t\":{t}}}").into_bytes();
        let req = publisher.request(run.method, &run.path, None, Some(payload));
        let sent = Instant::now();
        let outcome = publisher.exchange(&req, end + DRAIN)?;
        if seq >= first_counted {
            published.add(&outcome, sent);
            sent_counted += 1;
        }
    }
    let mut notes = join(threads)?;
    let secs = run.duration.as_secs_f64();
    let expected = published.ok() * a.observers as u64;
    let delivered = notes.ok();
    println!(
        "{}: {} observers, {} publishes/s for {secs:.0} s: {sent_counted} published, {} answered \
         2.xx; {delivered} of {expected} notifications ({:.0}/s, {:.3}), p50 {:.2} ms, p99 {:.2} ms; \
         {} confirmable acknowledged, {} observations ended by the server ({})",
        a.target,
        a.observers,
        a.rate,
        published.ok(),
        delivered as f64 / secs,
        ratio(delivered, expected),
        notes.percentile(0.50) as f64 / 1000.0,
        notes.percentile(0.99) as f64 / 1000.0,
        notes.confirmable,
        notes.answered() - delivered,
        notes.codes_text(),
    );
    println!(
        "RESULT coap-observe target={} observers={} rate={} seconds={secs:.0} published={sent_counted} \
         published_ok={} publish_p50_us={} publish_lost={} expected={expected} delivered={delivered} \
         deliveries_per_s={:.0} delivered_ratio={:.3} p50_us={} p99_us={} confirmable={} ended={} \
         {connect}",
        a.target,
        a.observers,
        a.rate,
        published.ok(),
        published.percentile(0.50),
        published.lost,
        delivered as f64 / secs,
        ratio(delivered, expected),
        notes.percentile(0.50),
        notes.percentile(0.99),
        notes.confirmable,
        notes.answered() - delivered,
    );
    Ok(())
}

/// An observer's notifications until `until`: those of counted publishes
/// (sequence number `first` on), each once, with latency from the
/// publisher's send time (`t`, µs since `start`).
fn observer(c: &mut Client, until: Instant, start: Instant, first: u64) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    while let Some(p) = c.recv(until)? {
        let kind = p.header.get_type();
        if kind == MessageType::Confirmable {
            c.ack(p.header.message_id)?;
        }
        if !matches!(kind, MessageType::Confirmable | MessageType::NonConfirmable)
            || p.get_token() != c.token_of_last_request()
        {
            continue;
        }
        if !is_success(&p.header.code) {
            // A final notification: the server ended the observation.
            *tally.codes.entry(p.header.code.to_string()).or_default() += 1;
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
        let (Some(seq), Some(t)) = (body["seq"].as_u64(), body["t"].as_u64()) else {
            continue;
        };
        if seq < first || !seen.insert(seq) {
            continue;
        }
        if kind == MessageType::Confirmable {
            tally.confirmable += 1;
        }
        *tally.codes.entry(p.header.code.to_string()).or_default() += 1;
        let sent = start + Duration::from_micros(t);
        tally.latencies_us.push(micros(sent.elapsed()));
    }
    Ok(tally)
}

/// Waits for every client's handshake (and registration); calls the run
/// off if one fails. Returns the cipher and handshake times as
/// `key=value` fields.
fn connect_all(
    run: &Run,
    ready: &mpsc::Receiver<Result<(Duration, &'static str), String>>,
    n: usize,
    limit_secs: u64,
) -> anyhow::Result<String> {
    let began = Instant::now();
    let limit = began + Duration::from_secs(limit_secs);
    let mut took = Vec::with_capacity(n);
    let mut ciphers = BTreeSet::new();
    let mut failed = Vec::new();
    while took.len() + failed.len() < n {
        match ready.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(Ok((t, cipher))) => {
                took.push(micros(t));
                ciphers.insert(cipher);
            }
            Ok(Err(e)) => failed.push(e),
            Err(_) => break,
        }
    }
    let wall = began.elapsed().as_secs_f64();
    if took.len() < n {
        run.start.abort();
        let missing = n - took.len() - failed.len();
        bail!(
            "{} of {n} clients connected in {wall:.1} s ({} failed, {missing} still connecting); \
             first error: {}",
            took.len(),
            failed.len(),
            failed.first().map_or("none", String::as_str)
        );
    }
    took.sort_unstable();
    let cipher = ciphers.into_iter().collect::<Vec<_>>().join(",");
    let pick = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        "{n} DTLS sessions in {wall:.1} s ({} at a time), {cipher}: handshake p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        run.gate.size,
        f64::from(pick(0.5)) / 1000.0,
        f64::from(pick(0.99)) / 1000.0,
        f64::from(pick(1.0)) / 1000.0,
    );
    Ok(format!(
        "cipher={cipher} connect_s={wall:.1} handshake_p50_us={} handshake_p99_us={} \
         handshake_max_us={}",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    ))
}

fn spawn<F>(f: F) -> anyhow::Result<thread::JoinHandle<anyhow::Result<Tally>>>
where
    F: FnOnce() -> anyhow::Result<Tally> + Send + 'static,
{
    thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .context("starting a client thread")
}

fn join(threads: Vec<thread::JoinHandle<anyhow::Result<Tally>>>) -> anyhow::Result<Tally> {
    let mut all = Tally::default();
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(tally)) => all.merge(tally),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert_with(|| anyhow::anyhow!("a client thread panicked"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e.context("a client failed")),
        None => Ok(all),
    }
}

/// At most `size` handshakes at once: a counting semaphore.
struct Gate {
    size: usize,
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit<'a>(&'a Gate);

impl Gate {
    fn new(size: usize) -> Self {
        Self {
            size,
            free: Mutex::new(size),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The moment every client starts at once, once all are connected; or the
/// word that the run is off.
#[derive(Default)]
struct Start {
    state: Mutex<Option<Option<Instant>>>,
    set: Condvar,
}

impl Start {
    fn go(&self, at: Instant) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(Some(at));
        self.set.notify_all();
    }

    fn abort(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(None);
        self.set.notify_all();
    }

    /// The start, or `None` when the run is off.
    fn wait(&self) -> Option<Instant> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(at) = *s {
                return at;
            }
            s = self.set.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_success(code: &MessageClass) -> bool {
    matches!(code, MessageClass::Response(_)) && code.to_string().starts_with("2.")
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// This process's CPU time (user + system), from /proc (Linux; USER_HZ is
/// 100 there).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_uri_path_segments() {
        assert_eq!(
            segments("/channels/c/messages/"),
            ["channels", "c", "messages"]
        );
        assert!(segments("/").is_empty());
    }

    #[test]
    fn tallies_merge_and_count_successes_only() {
        let mut a = Tally::default();
        a.codes.insert("2.04".into(), 3);
        a.latencies_us = vec![30, 10, 20];
        let mut b = Tally::default();
        b.codes.insert("4.03".into(), 1);
        b.codes.insert("2.04".into(), 1);
        b.latencies_us = vec![40];
        b.lost = 2;
        a.merge(b);
        assert_eq!((a.ok(), a.answered(), a.lost), (4, 5, 2));
        assert_eq!(a.codes_text(), "2.04:4,4.03:1");
        assert_eq!(
            (a.percentile(0.0), a.percentile(0.5), a.percentile(1.0)),
            (10, 30, 40)
        );
        assert_eq!(Tally::default().percentile(0.5), 0);
    }
}
