//! One load-generator client: a connected UDP socket, its DTLS session,
//! and confirmable requests sent and resent on it.

use super::*;

/// One client: a connected UDP socket, its DTLS session, and the CoAP
/// message ids and tokens it hands out.
pub(super) struct Client {
    pub(super) stream: SslStream<Udp>,
    /// The cipher suite the server chose.
    pub(super) cipher: &'static str,
    pub(super) mid: u16,
    pub(super) token: u32,
    pub(super) buf: Vec<u8>,
}

/// A request on the wire, to send and resend.
pub(super) struct Request {
    pub(super) mid: u16,
    pub(super) token: Vec<u8>,
    pub(super) bytes: Vec<u8>,
}

pub(super) enum Outcome {
    /// Answered (piggybacked, or a separate response), after `retransmits`.
    Answer { packet: Packet, retransmits: u32 },
    /// No answer after every retransmission.
    Lost { retransmits: u32 },
    /// The run ended first.
    Unfinished,
}

impl Client {
    pub(super) fn connect(
        server: SocketAddr,
        bind: SocketAddr,
        psk: &Psk,
        ciphers: &str,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(bind).context("binding a client socket")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(TICK))?;
        let mut b = SslContext::builder(SslMethod::dtls_client())?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
        b.set_cipher_list(ciphers)?;
        // PSK suites only: no certificate to verify.
        b.set_verify(SslVerifyMode::NONE);
        let psk = psk.clone();
        b.set_psk_client_callback(move |_, _hint, identity, key| {
            if psk.identity.len() >= identity.len() || psk.key.len() > key.len() {
                return Ok(0);
            }
            identity[..psk.identity.len()].copy_from_slice(&psk.identity);
            identity[psk.identity.len()] = 0;
            key[..psk.key.len()].copy_from_slice(&psk.key);
            Ok(psk.key.len())
        });
        let mut ssl = Ssl::new(&b.build())?;
        ssl.set_mtu(MTU)?;
        let mut stream = SslStream::new(ssl, Udp(socket))?;
        // OpenSSL retransmits its flights when called again after its timer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match stream.connect() {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ && Instant::now() < deadline => {}
                Err(e) => bail!("DTLS handshake with {server}: {e}"),
            }
        }
        let seed = u64::from(stream.get_ref().0.local_addr()?.port());
        let cipher = stream.ssl().current_cipher().map_or("none", |c| c.name());
        Ok(Self {
            stream,
            cipher,
            mid: seed as u16,
            token: (seed as u32) << 16,
            buf: vec![0; 2048],
        })
    }

    /// A confirmable request with a fresh message id and token.
    pub(super) fn request(
        &mut self,
        method: RequestType,
        path: &[String],
        observe: Option<u32>,
        json: Option<Vec<u8>>,
    ) -> Request {
        self.mid = self.mid.wrapping_add(1);
        self.token = self.token.wrapping_add(1);
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.mid;
        p.set_token(self.token.to_be_bytes().to_vec());
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        for s in path {
            p.add_option(coap_lite::CoapOption::UriPath, s.as_bytes().to_vec());
        }
        if let Some(body) = json {
            p.set_content_format(ContentFormat::ApplicationJSON);
            p.payload = body;
        }
        Request {
            mid: self.mid,
            token: p.get_token().to_vec(),
            // A request of a few options and a small body always encodes.
            bytes: p.to_bytes().unwrap_or_default(),
        }
    }

    pub(super) fn token_of_last_request(&self) -> [u8; 4] {
        self.token.to_be_bytes()
    }

    /// Sends `req` and waits for its answer, retransmitting on timeout;
    /// gives up at `end`.
    pub(super) fn exchange(&mut self, req: &Request, end: Instant) -> anyhow::Result<Outcome> {
        self.send(&req.bytes)?;
        let mut timeout = ACK_TIMEOUT;
        let mut next = Instant::now() + timeout;
        let mut retransmits = 0;
        let mut acked = false;
        loop {
            match self.recv(next.min(end))? {
                Some(p) => {
                    let kind = p.header.get_type();
                    let ours_mid = p.header.message_id == req.mid;
                    let ours_token = p.get_token() == req.token.as_slice();
                    match (kind, p.header.code) {
                        (MessageType::Acknowledgement, MessageClass::Empty) if ours_mid => {
                            // A separate response will follow.
                            acked = true;
                        }
                        (MessageType::Acknowledgement, _) if ours_mid && ours_token => {
                            return Ok(Outcome::Answer {
                                packet: p,
                                retransmits,
                            });
                        }
                        (MessageType::Reset, _) if ours_mid => {
                            return Ok(Outcome::Answer {
                                packet: p,
                                retransmits,
                            });
                        }
                        (MessageType::Confirmable | MessageType::NonConfirmable, _) => {
                            if kind == MessageType::Confirmable {
                                self.ack(p.header.message_id)?;
                            }
                            if ours_token && matches!(p.header.code, MessageClass::Response(_)) {
                                return Ok(Outcome::Answer {
                                    packet: p,
                                    retransmits,
                                });
                            }
                        }
                        _ => {}
                    }
                }
                None if Instant::now() >= end => return Ok(Outcome::Unfinished),
                None if retransmits >= MAX_RETRANSMIT => return Ok(Outcome::Lost { retransmits }),
                None => {
                    if !acked {
                        self.send(&req.bytes)?;
                    }
                    retransmits += 1;
                    timeout *= 2;
                    next = Instant::now() + timeout;
                }
            }
        }
    }

    pub(super) fn ack(&mut self, mid: u16) -> anyhow::Result<()> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Acknowledgement);
        p.header.code = MessageClass::Empty;
        p.header.message_id = mid;
        let bytes = p.to_bytes().unwrap_or_default();
        self.send(&bytes)
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.ssl_write(bytes).context("DTLS write")?;
        Ok(())
    }

    /// The next CoAP message, or `None` once `until` has passed. Datagrams
    /// that are not CoAP are skipped.
    pub(super) fn recv(&mut self, until: Instant) -> anyhow::Result<Option<Packet>> {
        loop {
            if Instant::now() >= until {
                return Ok(None);
            }
            match self.stream.ssl_read(&mut self.buf) {
                Ok(0) => bail!("the server closed the DTLS session"),
                Ok(n) => {
                    if let Ok(p) = Packet::from_bytes(&self.buf[..n]) {
                        return Ok(Some(p));
                    }
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    bail!("the server closed the DTLS session")
                }
                Err(e) => bail!("DTLS read: {e}"),
            }
        }
    }
}

/// A connected UDP socket as OpenSSL's transport: one datagram a read or
/// write.
pub(super) struct Udp(UdpSocket);

impl Read for Udp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.recv(buf) {
            // A read timeout: "try again" to OpenSSL.
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(io::ErrorKind::WouldBlock.into()),
            r => r,
        }
    }
}

impl Write for Udp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
