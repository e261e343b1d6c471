//! DTLS 1.2 with OpenSSL (ADR 006): one server context for pre-shared keys
//! and certificates, the cookie exchange, and the in-memory channel that
//! lets OpenSSL run over datagrams the endpoint demultiplexes by address.
//!
//! OpenSSL's PSK callback is synchronous while device keys live behind the
//! async store, so the identity is read from the ClientKeyExchange (sent in
//! the clear in DTLS 1.2, epoch 0) before the datagram reaches OpenSSL; the
//! peer's task looks the key up and leaves it in the handshake's slot, which
//! the callback only reads.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use openssl::ex_data::Index;
use openssl::pkey::PKey;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// DTLS record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// DTLS handshake header: type, length, message_seq, fragment offset and
/// length.
const HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const CLIENT_KEY_EXCHANGE: u8 = 16;
/// The path MTU assumed for every peer (IPv6's minimum).
pub(crate) const MTU: u32 = 1280;
/// Cookies are valid for the window they were made in and the one before.
const COOKIE_WINDOW_SECS: u64 = 300;

/// Why a DTLS context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("no certificate in the server chain")]
    NoCertificate,
}

/// The server's certificate chain and key (PEM), from the platform's PKI.
pub struct ServerIdentity {
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// What the PSK callback reads: the identity the peer's task looked up and
/// its key. Empty until the ClientKeyExchange has been seen and the key
/// found; the callback then refuses (unknown identity).
#[derive(Default)]
pub(crate) struct PskSlot {
    pub(crate) identity: Vec<u8>,
    pub(crate) key: Option<Zeroizing<Vec<u8>>>,
}

pub(crate) type SharedSlot = Arc<Mutex<PskSlot>>;

fn addr_index() -> Index<Ssl, SocketAddr> {
    static I: OnceLock<Index<Ssl, SocketAddr>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

fn slot_index() -> Index<Ssl, SharedSlot> {
    static I: OnceLock<Index<Ssl, SharedSlot>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

/// The server's DTLS context, shared by every peer.
pub struct DtlsContext {
    /// Replaced whole when the server certificate is renewed; sessions
    /// already made keep the one they started with.
    ssl: std::sync::RwLock<SslContext>,
    cookies: Arc<CookieSecret>,
}

impl DtlsContext {
    /// DTLS 1.2 only; PSK suites (AES-128 GCM, CCM and CCM_8) and ECDHE-ECDSA
    /// ones for certificate clients; cookie exchange on; no tickets. CCM_8
    /// (what tinydtls and most constrained stacks speak) sits at OpenSSL 3's
    /// security level 0, so the context runs there; certificate keys are
    /// checked by the platform's PKI after the handshake, not by OpenSSL.
    pub fn new(server: &ServerIdentity) -> Result<Self, DtlsError> {
        let cookies = Arc::new(CookieSecret::new());
        Ok(Self {
            ssl: std::sync::RwLock::new(Self::build(server, &cookies)?),
            cookies,
        })
    }

    /// Presents `server` from the next handshake on (a renewed server
    /// certificate); cookies already sent stay valid.
    pub fn set_identity(&self, server: &ServerIdentity) -> Result<(), DtlsError> {
        let ssl = Self::build(server, &self.cookies)?;
        *self.ssl.write().unwrap_or_else(|p| p.into_inner()) = ssl;
        Ok(())
    }

    /// The leaf certificate new handshakes present (DER).
    pub fn certificate_der(&self) -> Option<Vec<u8>> {
        let ssl = self.ssl.read().unwrap_or_else(|p| p.into_inner());
        ssl.certificate().and_then(|c| c.to_der().ok())
    }

    fn build(
        server: &ServerIdentity,
        cookies: &Arc<CookieSecret>,
    ) -> Result<SslContext, DtlsError> {
        let mut b = SslContextBuilder::new(SslMethod::dtls_server())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_cipher_list(
            "PSK-AES128-GCM-SHA256:PSK-AES128-CCM8:PSK-AES128-CCM:\
             ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:\
             @SECLEVEL=0",
        )?;
        b.set_options(
            SslOptions::COOKIE_EXCHANGE
                | SslOptions::NO_TICKET
                | SslOptions::CIPHER_SERVER_PREFERENCE
                | SslOptions::NO_RENEGOTIATION,
        );
        b.set_groups_list("P-256")?;
        let mut certs = X509::stack_from_pem(server.chain_pem.as_bytes())?.into_iter();
        let leaf = certs.next().ok_or(DtlsError::NoCertificate)?;
        b.set_certificate(&leaf)?;
        for c in certs {
            b.add_extra_chain_cert(c)?;
        }
        let key = PKey::private_key_from_pem(server.key_pem.as_bytes())?;
        b.set_private_key(&key)?;
        b.check_private_key()?;
        // Certificate suites need a client certificate. OpenSSL checks that
        // the client holds its key; whether the platform trusts it (chain,
        // revocation, device) is the PKI's decision, after the handshake.
        b.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            |_preverified, _chain| true,
        );
        b.set_psk_server_callback(|ssl, identity, out| {
            let Some(slot) = ssl.ex_data(slot_index()) else {
                return Ok(0);
            };
            let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            match (&slot.key, identity) {
                (Some(key), Some(id))
                    if id == slot.identity.as_slice() && key.len() <= out.len() =>
                {
                    out[..key.len()].copy_from_slice(key);
                    Ok(key.len())
                }
                // Unknown identity: the handshake ends with an alert.
                _ => Ok(0),
            }
        });
        let generate = Arc::clone(cookies);
        b.set_cookie_generate_cb(move |ssl, out| {
            let Some(addr) = ssl.ex_data(addr_index()) else {
                return Ok(0);
            };
            let c = generate.cookie(addr, window_now());
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            Ok(n)
        });
        let verify = Arc::clone(cookies);
        b.set_cookie_verify_cb(move |ssl, cookie| {
            let Some(addr) = ssl.ex_data(addr_index()) else {
                return false;
            };
            verify.is_current(addr, cookie)
        });
        Ok(b.build())
    }

    /// The cookie for `addr` now: what OpenSSL's cookie callback makes.
    pub(crate) fn cookie(&self, addr: &SocketAddr) -> Vec<u8> {
        self.cookies.cookie(addr, window_now())
    }

    /// Whether `cookie` is one made for `addr` in this window or the one
    /// before (what OpenSSL's verify callback accepts).
    pub(crate) fn cookie_is_current(&self, addr: &SocketAddr, cookie: &[u8]) -> bool {
        self.cookies.is_current(addr, cookie)
    }

    /// A server-side DTLS stream for the peer at `addr`, reading the PSK
    /// its task puts in `slot`.
    pub(crate) fn stream(
        &self,
        addr: SocketAddr,
        slot: SharedSlot,
    ) -> Result<SslStream<Chan>, openssl::error::ErrorStack> {
        let ctx = self.ssl.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ssl = Ssl::new(&ctx)?;
        ssl.set_ex_data(addr_index(), addr);
        ssl.set_ex_data(slot_index(), slot);
        ssl.set_mtu(MTU)?;
        SslStream::new(ssl, Chan::default())
    }
}

/// The HMAC key behind the cookies, random per process.
struct CookieSecret([u8; 32]);

impl CookieSecret {
    fn new() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    fn mac(&self, addr: &SocketAddr, window: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(&window.to_be_bytes());
        match addr {
            SocketAddr::V4(a) => m.update(&a.ip().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&addr.port().to_be_bytes());
        m
    }

    fn cookie(&self, addr: &SocketAddr, window: u64) -> Vec<u8> {
        self.mac(addr, window).finalize().into_bytes()[..16].to_vec()
    }

    fn verify(&self, addr: &SocketAddr, window: u64, cookie: &[u8]) -> bool {
        self.mac(addr, window).verify_truncated_left(cookie).is_ok() && cookie.len() == 16
    }

    fn is_current(&self, addr: &SocketAddr, cookie: &[u8]) -> bool {
        let now = window_now();
        self.verify(addr, now, cookie) || self.verify(addr, now.saturating_sub(1), cookie)
    }
}

fn window_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / COOKIE_WINDOW_SECS)
}

/// OpenSSL's view of the network for one peer: each `read` takes one
/// datagram the endpoint received, each `write` is one datagram to send.
#[derive(Default)]
pub(crate) struct Chan {
    pub(crate) inbox: VecDeque<Vec<u8>>,
    pub(crate) outbox: VecDeque<Vec<u8>>,
}

impl Read for Chan {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Chan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The DTLS records in a datagram: (content type, epoch, fragment).
fn records(datagram: &[u8]) -> impl Iterator<Item = (u8, u16, &[u8])> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.len() < RECORD_HEADER {
            return None;
        }
        let kind = rest[0];
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let body = rest.get(RECORD_HEADER..RECORD_HEADER + len)?;
        rest = &rest[RECORD_HEADER + len..];
        Some((kind, epoch, body))
    })
}

/// Whether a datagram opens a handshake: its first record is an epoch-0
/// handshake record holding a ClientHello. Only such a datagram makes the
/// endpoint keep state for a new address.
pub fn is_client_hello(datagram: &[u8]) -> bool {
    records(datagram).next().is_some_and(|(kind, epoch, body)| {
        kind == CONTENT_HANDSHAKE && epoch == 0 && body.first() == Some(&CLIENT_HELLO)
    })
}

/// The PSK identity of a ClientKeyExchange in this datagram, if it has one
/// (the first fragment of an epoch-0 handshake message of that type; the
/// identity, a 16-bit length and its bytes, leads the message for every
/// PSK key exchange).
pub fn psk_identity(datagram: &[u8]) -> Option<&[u8]> {
    records(datagram).find_map(|(kind, epoch, body)| {
        if kind != CONTENT_HANDSHAKE || epoch != 0 || body.len() < HANDSHAKE_HEADER {
            return None;
        }
        let offset = u32::from_be_bytes([0, body[6], body[7], body[8]]);
        if body[0] != CLIENT_KEY_EXCHANGE || offset != 0 {
            return None;
        }
        let fragment = &body[HANDSHAKE_HEADER..];
        let len = usize::from(u16::from_be_bytes([*fragment.first()?, *fragment.get(1)?]));
        fragment.get(2..2 + len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed P-256 identity named `cn`.
    fn identity(cn: &str) -> ServerIdentity {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        b.set_serial_number(&serial).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        ServerIdentity {
            chain_pem: String::from_utf8(b.build().to_pem().unwrap()).unwrap(),
            key_pem: Zeroizing::new(
                String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            ),
        }
    }

    #[test]
    fn a_renewed_certificate_is_presented_from_the_next_session_on() {
        let ctx = DtlsContext::new(&identity("first")).unwrap();
        let first = ctx.certificate_der().unwrap();
        let addr: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let cookie = ctx.cookie(&addr);
        ctx.set_identity(&identity("renewed")).unwrap();
        assert_ne!(ctx.certificate_der().unwrap(), first);
        assert!(ctx.stream(addr, SharedSlot::default()).is_ok());
        // Cookies already sent still open a handshake.
        assert!(ctx.cookie_is_current(&addr, &cookie));
    }
    use proptest::prelude::*;

    fn record(kind: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn handshake(kind: u8, offset: u32, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_be_bytes();
        let off = offset.to_be_bytes();
        let mut h = vec![kind, len[1], len[2], len[3], 0, 2, off[1], off[2], off[3]];
        h.extend_from_slice(&[len[1], len[2], len[3]]);
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn finds_the_psk_identity_of_a_client_key_exchange() {
        let cke = handshake(CLIENT_KEY_EXCHANGE, 0, b"\x00\x05dev-1");
        let mut d = record(CONTENT_HANDSHAKE, 0, &handshake(11, 0, b"cert"));
        d.extend(record(CONTENT_HANDSHAKE, 0, &cke));
        assert_eq!(psk_identity(&d), Some(&b"dev-1"[..]));
        // Not in a later epoch, not in a later fragment, not cut short.
        assert_eq!(psk_identity(&record(CONTENT_HANDSHAKE, 1, &cke)), None);
        let later = handshake(CLIENT_KEY_EXCHANGE, 4, b"\x00\x05dev-1");
        assert_eq!(psk_identity(&record(CONTENT_HANDSHAKE, 0, &later)), None);
        let short = handshake(CLIENT_KEY_EXCHANGE, 0, b"\x00\x09dev-1");
        assert_eq!(psk_identity(&record(CONTENT_HANDSHAKE, 0, &short)), None);
        let mut truncated = record(CONTENT_HANDSHAKE, 0, &cke);
        truncated.truncate(truncated.len() - 1);
        assert_eq!(psk_identity(&truncated), None);
    }

    #[test]
    fn only_an_epoch_zero_client_hello_opens_a_handshake() {
        let hello = handshake(CLIENT_HELLO, 0, b"hello");
        assert!(is_client_hello(&record(CONTENT_HANDSHAKE, 0, &hello)));
        assert!(!is_client_hello(&record(CONTENT_HANDSHAKE, 1, &hello)));
        assert!(!is_client_hello(&record(23, 0, &hello)));
        assert!(!is_client_hello(&[22, 0xfe, 0xfd]));
        assert!(!is_client_hello(b""));
    }

    #[test]
    fn cookies_are_bound_to_the_address_and_the_window() {
        let s = CookieSecret::new();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let c = s.cookie(&a, 7);
        assert!(s.verify(&a, 7, &c));
        assert!(!s.verify(&b, 7, &c));
        assert!(!s.verify(&a, 8, &c));
        assert!(!s.verify(&a, 7, &c[..8]));
    }

    /// The client's second flight for a PSK suite, as one datagram:
    /// ClientKeyExchange, ChangeCipherSpec, Finished (encrypted, epoch 1).
    fn psk_flight(identity: &[u8]) -> (Vec<u8>, usize) {
        let mut cke = (identity.len() as u16).to_be_bytes().to_vec();
        cke.extend_from_slice(identity);
        let mut d = record(
            CONTENT_HANDSHAKE,
            0,
            &handshake(CLIENT_KEY_EXCHANGE, 0, &cke),
        );
        let cke_end = d.len();
        d.extend(record(20, 0, &[1]));
        d.extend(record(CONTENT_HANDSHAKE, 1, &[0; 40]));
        (d, cke_end)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_are_no_hello_and_no_identity_unless_framed(
            d in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if is_client_hello(&d) {
                prop_assert!(d[0] == CONTENT_HANDSHAKE && d[3..5] == [0, 0]);
                prop_assert_eq!(d[RECORD_HEADER], CLIENT_HELLO);
            }
            if let Some(id) = psk_identity(&d) {
                prop_assert!(id.len() + RECORD_HEADER + HANDSHAKE_HEADER + 2 <= d.len());
            }
        }

        /// Framed like a record, so the record walk gets past the header.
        #[test]
        fn arbitrary_records_never_panic(
            kind in prop_oneof![Just(CONTENT_HANDSHAKE), any::<u8>()],
            epoch in 0u16..2,
            body in proptest::collection::vec(any::<u8>(), 0..100),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut d = record(kind, epoch, &body);
            d.extend(tail);
            let hello = kind == CONTENT_HANDSHAKE && epoch == 0 && body.first() == Some(&CLIENT_HELLO);
            prop_assert_eq!(is_client_hello(&d), hello);
            let _ = psk_identity(&d);
        }

        /// A flight cut short has the identity only once the whole
        /// ClientKeyExchange record is in; a ClientHello cut short is none.
        #[test]
        fn truncated_handshakes_are_refused(
            identity in proptest::collection::vec(any::<u8>(), 0..64),
            hello in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let (d, cke_end) = psk_flight(&identity);
            for n in 0..=d.len() {
                let expected = (n >= cke_end).then_some(identity.as_slice());
                prop_assert_eq!(psk_identity(&d[..n]), expected);
            }
            let h = record(CONTENT_HANDSHAKE, 0, &handshake(CLIENT_HELLO, 0, &hello));
            for n in 0..=h.len() {
                prop_assert_eq!(is_client_hello(&h[..n]), n == h.len());
            }
        }

        #[test]
        fn an_arbitrary_cookie_does_not_verify(
            cookie in proptest::collection::vec(any::<u8>(), 0..64),
            window in any::<u64>(),
        ) {
            let s = CookieSecret::new();
            let a: SocketAddr = "[2001:db8::1]:5684".parse().unwrap();
            prop_assert!(!s.verify(&a, window, &cookie));
            prop_assert!(!s.is_current(&a, &cookie));
            prop_assert!(s.verify(&a, window, &s.cookie(&a, window)));
        }
    }
}
