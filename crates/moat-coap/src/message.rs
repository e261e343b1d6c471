//! CoAP messages as the adapter sees them: a datagram parsed (with
//! coap-lite) into a [`Request`] or a message-layer signal, and responses
//! built back. Everything a peer can send is checked here first: version,
//! message type and code combinations, critical options we do not know
//! (4.02), block options.

use coap_lite::block_handler::BlockValue;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// Options the adapter understands; any other critical (odd) option in a
/// request gets 4.02 Bad Option (RFC 7252 §5.4.1).
const KNOWN_OPTIONS: [u16; 14] = [3, 4, 6, 7, 11, 12, 14, 15, 17, 23, 27, 28, 60, 258];
/// Proxy-Uri and Proxy-Scheme: 5.05 Proxying Not Supported.
const PROXY_OPTIONS: [u16; 2] = [35, 39];

/// A request, with the options the resources use.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub confirmable: bool,
    pub mid: u16,
    pub token: Vec<u8>,
    pub method: RequestType,
    /// Uri-Path segments.
    pub path: Vec<String>,
    /// Uri-Query arguments.
    pub query: Vec<String>,
    pub content_format: Option<u16>,
    pub observe: Option<u32>,
    pub block1: Option<BlockValue>,
    pub block2: Option<BlockValue>,
    pub size1: Option<u32>,
    pub payload: Vec<u8>,
}

/// What a datagram is, to the message layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request(Request),
    /// An acknowledgement of one of our confirmable messages.
    Ack(u16),
    /// A reset: the peer rejects one of our messages (cancels an
    /// observation when it answers a notification).
    Reset(u16),
    /// An empty confirmable message ("CoAP ping"): answered with a reset.
    Ping(u16),
    /// A request the adapter refuses at the message layer: answered with
    /// this code (confirmable or not) and counted.
    Refused {
        confirmable: bool,
        mid: u16,
        token: Vec<u8>,
        code: ResponseType,
        why: &'static str,
    },
}

/// Why a datagram was dropped without an answer (counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a CoAP message")]
    Unparsable,
    #[error("CoAP version other than 1")]
    Version,
    #[error("a response or reserved code sent to the server")]
    UnexpectedCode,
}

impl Malformed {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Malformed::Unparsable => "unparsable",
            Malformed::Version => "version",
            Malformed::UnexpectedCode => "unexpected_code",
        }
    }
}

/// Parses a datagram from a client.
pub fn parse_request(datagram: &[u8]) -> Result<Incoming, Malformed> {
    // The version is checked before anything else: messages of another
    // version are silently ignored (RFC 7252 §3).
    if datagram.first().is_some_and(|b| b >> 6 != 1) {
        return Err(Malformed::Version);
    }
    let packet = Packet::from_bytes(datagram).map_err(|_| Malformed::Unparsable)?;
    if format_error(datagram, &packet) {
        return Err(Malformed::Unparsable);
    }
    let mid = packet.header.message_id;
    let kind = packet.header.get_type();
    let confirmable = kind == MessageType::Confirmable;
    match (kind, packet.header.code) {
        (MessageType::Acknowledgement, MessageClass::Empty) => return Ok(Incoming::Ack(mid)),
        (MessageType::Reset, _) => return Ok(Incoming::Reset(mid)),
        (MessageType::Confirmable, MessageClass::Empty) => return Ok(Incoming::Ping(mid)),
        (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {}
        // An empty NON, a response piggybacked on an ACK, or any response
        // or reserved code: nothing a server takes.
        _ => return Err(Malformed::UnexpectedCode),
    }
    let MessageClass::Request(method) = packet.header.code else {
        return Err(Malformed::UnexpectedCode);
    };
    let token = packet.get_token().to_vec();
    let refuse = |code, why| {
        Ok(Incoming::Refused {
            confirmable,
            mid,
            token: token.clone(),
            code,
            why,
        })
    };
    if method == RequestType::UnKnown {
        return refuse(ResponseType::MethodNotAllowed, "unknown method");
    }
    for (&number, _) in packet.options() {
        if PROXY_OPTIONS.contains(&number) {
            return refuse(ResponseType::ProxyingNotSupported, "no proxying here");
        }
        if number % 2 == 1 && !KNOWN_OPTIONS.contains(&number) {
            return refuse(ResponseType::BadOption, "an unrecognized critical option");
        }
    }
    let strings = |o: CoapOption| -> Result<Vec<String>, ()> {
        packet.get_option(o).map_or(Ok(Vec::new()), |list| {
            list.iter()
                .map(|v| String::from_utf8(v.clone()).map_err(drop))
                .collect()
        })
    };
    let (Ok(path), Ok(query)) = (strings(CoapOption::UriPath), strings(CoapOption::UriQuery))
    else {
        return refuse(
            ResponseType::BadOption,
            "Uri-Path and Uri-Query must be UTF-8",
        );
    };
    let uint = |o: CoapOption, max_len: usize| -> Result<Option<u32>, ()> {
        match packet.get_first_option(o) {
            None => Ok(None),
            Some(v) if v.len() <= max_len => {
                Ok(Some(v.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b))))
            }
            Some(_) => Err(()),
        }
    };
    let (Ok(content_format), Ok(observe), Ok(size1)) = (
        uint(CoapOption::ContentFormat, 2),
        uint(CoapOption::Observe, 3),
        uint(CoapOption::Size1, 4),
    ) else {
        return refuse(ResponseType::BadOption, "an option value too long");
    };
    let block = |o: CoapOption| -> Result<Option<BlockValue>, ()> {
        match packet.get_first_option_as::<BlockValue>(o) {
            None => Ok(None),
            // SZX 7 is reserved (BERT is for CoAP over TCP).
            Some(Ok(b)) if b.size_exponent < 7 => Ok(Some(b)),
            Some(_) => Err(()),
        }
    };
    let (Ok(block1), Ok(block2)) = (block(CoapOption::Block1), block(CoapOption::Block2)) else {
        return refuse(ResponseType::BadOption, "an invalid block option");
    };
    Ok(Incoming::Request(Request {
        confirmable,
        mid,
        token,
        method,
        path,
        query,
        content_format: content_format.map(|c| c as u16),
        observe,
        block1,
        block2,
        size1,
        payload: packet.payload,
    }))
}

/// What RFC 7252 §3 makes a message format error but coap-lite takes: an
/// Empty message with bytes after the message id (a token, options, a
/// payload), a payload marker with no payload after it (coap-lite reads
/// that as no payload). coap-lite writes back what it parsed byte for byte,
/// so a datagram longer than that ends in a bare marker.
fn format_error(datagram: &[u8], packet: &Packet) -> bool {
    if packet.header.code == MessageClass::Empty {
        return datagram.len() != 4;
    }
    packet.payload.is_empty()
        && datagram.last() == Some(&0xff)
        && packet
            .to_bytes_unlimited()
            .is_ok_and(|b| b.len() < datagram.len())
}

impl Request {
    /// The request encoded as a client's coap-lite would send it, with only
    /// the options it carries; for the tests and the fuzz target.
    #[doc(hidden)]
    pub fn to_datagram(&self) -> Result<Vec<u8>, coap_lite::error::MessageError> {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(if self.confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        p.header.code = MessageClass::Request(self.method);
        p.header.message_id = self.mid;
        p.set_token(self.token.clone());
        for s in &self.path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for s in &self.query {
            p.add_option(CoapOption::UriQuery, s.as_bytes().to_vec());
        }
        let uints = [
            (
                CoapOption::ContentFormat,
                self.content_format.map(u32::from),
            ),
            (CoapOption::Observe, self.observe),
            (CoapOption::Size1, self.size1),
        ];
        for (o, v) in uints {
            if let Some(v) = v {
                p.add_option(o, uint_bytes(v));
            }
        }
        for (o, b) in [
            (CoapOption::Block1, &self.block1),
            (CoapOption::Block2, &self.block2),
        ] {
            if let Some(b) = b {
                p.add_option_as(o, b.clone());
            }
        }
        p.payload = self.payload.clone();
        p.to_bytes_unlimited()
    }
}

/// A response being built: the code, the options, the payload.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) code: ResponseType,
    pub(crate) packet: Packet,
}

impl Response {
    pub(crate) fn new(code: ResponseType) -> Self {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Response(code);
        Self { code, packet }
    }

    /// An error with a diagnostic payload (RFC 7252 §5.5.2).
    pub(crate) fn error(code: ResponseType, why: &str) -> Self {
        let mut r = Self::new(code);
        r.packet.payload = why.as_bytes().to_vec();
        r
    }

    pub(crate) fn option_uint(mut self, o: CoapOption, value: u32) -> Self {
        self.packet.clear_option(o);
        self.packet.add_option(o, uint_bytes(value));
        self
    }

    pub(crate) fn option_block(mut self, o: CoapOption, b: BlockValue) -> Self {
        self.packet.clear_option(o);
        self.packet.add_option_as(o, b);
        self
    }

    pub(crate) fn payload(mut self, payload: Vec<u8>) -> Self {
        self.packet.payload = payload;
        self
    }

    /// Serialized as the answer to a request: piggybacked on the ACK of a
    /// confirmable one, non-confirmable for a non-confirmable one (with
    /// `mid` then a fresh id).
    pub(crate) fn answer(mut self, to_confirmable: bool, mid: u16, token: &[u8]) -> Vec<u8> {
        self.packet.header.set_version(1);
        self.packet.header.set_type(if to_confirmable {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        });
        self.packet.header.message_id = mid;
        self.packet.set_token(token.to_vec());
        self.bytes()
    }

    /// Serialized as a message of its own (a notification).
    pub(crate) fn message(mut self, confirmable: bool, mid: u16, token: &[u8]) -> Vec<u8> {
        self.packet.header.set_version(1);
        self.packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        self.packet.header.message_id = mid;
        self.packet.set_token(token.to_vec());
        self.bytes()
    }

    fn bytes(&self) -> Vec<u8> {
        // Payloads are cut into blocks before this; the limit only guards
        // against a bug making an unsendable datagram.
        self.packet.to_bytes_unlimited().unwrap_or_default()
    }
}

/// An empty message (ACK or RST) for `mid`.
pub(crate) fn empty(kind: MessageType, mid: u16) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = mid;
    p.to_bytes().unwrap_or_default()
}

/// An unsigned option value in as few bytes as it takes (0 is empty).
pub(crate) fn uint_bytes(value: u32) -> Vec<u8> {
    let b = value.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b[skip..].to_vec()
}

/// The dotted form of a response code, for metrics and logs ("2.04").
pub(crate) fn code_label(code: ResponseType) -> String {
    let n: u8 = MessageClass::Response(code).into();
    format!("{}.{:02}", n >> 5, n & 0x1f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(kind: MessageType, code: MessageClass, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind);
        p.header.code = code;
        p.header.message_id = 7;
        p.set_token(vec![1, 2]);
        for (n, v) in options {
            p.add_option(CoapOption::from(*n), v.to_vec());
        }
        p.to_bytes().unwrap()
    }

    #[test]
    fn parses_a_request_with_its_options() {
        let d = request(
            MessageType::Confirmable,
            MessageClass::Request(RequestType::Post),
            &[
                (11, b"channels"),
                (11, b"c"),
                (12, &[110]),
                (15, b"a=b"),
                (60, &[1, 0]),
            ],
        );
        let Ok(Incoming::Request(r)) = parse_request(&d) else {
            panic!("not a request");
        };
        assert_eq!(r.path, ["channels", "c"]);
        assert_eq!(r.query, ["a=b"]);
        assert_eq!(
            (r.content_format, r.size1, r.mid),
            (Some(110), Some(256), 7)
        );
        assert!(r.confirmable);
    }

    #[test]
    fn refuses_what_a_server_cannot_take() {
        let post = MessageClass::Request(RequestType::Post);
        let refused = |d: &[u8]| match parse_request(d) {
            Ok(Incoming::Refused { code, .. }) => Some(code),
            _ => None,
        };
        // An unknown critical option, a proxy option, a bad block size.
        assert_eq!(
            refused(&request(MessageType::Confirmable, post, &[(2049, b"x")])),
            Some(ResponseType::BadOption)
        );
        assert_eq!(
            refused(&request(
                MessageType::Confirmable,
                post,
                &[(35, b"coap://x")]
            )),
            Some(ResponseType::ProxyingNotSupported)
        );
        assert_eq!(
            refused(&request(MessageType::Confirmable, post, &[(27, &[0x0f])])),
            Some(ResponseType::BadOption)
        );
        // An unknown elective option is ignored.
        assert!(matches!(
            parse_request(&request(MessageType::Confirmable, post, &[(2048, b"x")])),
            Ok(Incoming::Request(_))
        ));
        assert_eq!(parse_request(&[0x80, 1, 0, 0]), Err(Malformed::Version));
        // A payload marker with no payload, an Empty message with a token
        // or a payload: format errors (RFC 7252 §3).
        let mut bare = request(MessageType::Confirmable, post, &[(11, b"c")]);
        bare.push(0xff);
        assert_eq!(parse_request(&bare), Err(Malformed::Unparsable));
        assert_eq!(
            parse_request(&[0x41, 0, 0, 7, 1]),
            Err(Malformed::Unparsable)
        );
        assert_eq!(
            parse_request(&[0x60, 0, 0, 7, 0xff, 1]),
            Err(Malformed::Unparsable)
        );
        assert_eq!(parse_request(&[0x60, 0, 0, 7]), Ok(Incoming::Ack(7)));
        // A value ending in 0xff is no marker.
        let etag = request(MessageType::Confirmable, post, &[(4, &[1, 0xff])]);
        assert!(matches!(parse_request(&etag), Ok(Incoming::Request(_))));
        assert_eq!(parse_request(&[0x40]), Err(Malformed::Unparsable));
        let ack = request(
            MessageType::Acknowledgement,
            MessageClass::Response(ResponseType::Content),
            &[],
        );
        assert_eq!(parse_request(&ack), Err(Malformed::UnexpectedCode));
    }

    #[test]
    fn answers_piggyback_on_the_ack() {
        let bytes = Response::new(ResponseType::Changed).answer(true, 9, &[5]);
        let p = Packet::from_bytes(&bytes).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!((p.header.message_id, p.get_token()), (9, &[5][..]));
        assert_eq!(code_label(ResponseType::Changed), "2.04");
        assert_eq!(code_label(ResponseType::RequestEntityTooLarge), "4.13");
        assert_eq!(uint_bytes(0), Vec::<u8>::new());
        assert_eq!(uint_bytes(0x0102), vec![1, 2]);
    }

    /// A block option coap-lite can carry: NUM fits its 16-bit value (so
    /// up to 4095), SZX 0..=6.
    fn block() -> impl Strategy<Value = BlockValue> {
        (0u16..4096, any::<bool>(), 0u8..7).prop_map(|(num, more, size_exponent)| BlockValue {
            num,
            more,
            size_exponent,
        })
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let method = prop_oneof![
            Just(RequestType::Get),
            Just(RequestType::Post),
            Just(RequestType::Put),
            Just(RequestType::Delete),
            Just(RequestType::Fetch),
            Just(RequestType::Patch),
            Just(RequestType::IPatch),
        ];
        let header = (
            any::<bool>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..=8),
            method,
        );
        let uris = (
            proptest::collection::vec("\\PC{0,16}", 0..5),
            proptest::collection::vec("[a-z]{1,6}=\\PC{0,8}", 0..3),
        );
        let options = (
            proptest::option::of(any::<u16>()),
            proptest::option::of(0u32..1 << 24),
            proptest::option::of(block()),
            proptest::option::of(block()),
            proptest::option::of(any::<u32>()),
        );
        let payload = proptest::collection::vec(any::<u8>(), 0..300);
        (header, uris, options, payload).prop_map(
            |(
                (confirmable, mid, token, method),
                (path, query),
                (content_format, observe, block1, block2, size1),
                payload,
            )| Request {
                confirmable,
                mid,
                token,
                method,
                path,
                query,
                content_format,
                observe,
                block1,
                block2,
                size1,
                payload,
            },
        )
    }

    /// Bytes that pass the version check half the time.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(v1, mut d)| {
                if let Some(b) = d.first_mut().filter(|_| v1) {
                    *b = 0x40 | (*b & 0x3f);
                }
                d
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_request_comes_back_as_it_was_encoded(r in any_request()) {
            prop_assert_eq!(parse_request(&r.to_datagram().unwrap()), Ok(Incoming::Request(r)));
        }

        #[test]
        fn arbitrary_bytes_are_parsed_or_dropped(d in datagram()) {
            match parse_request(&d) {
                Err(Malformed::Version) => prop_assert_ne!(d[0] >> 6, 1),
                Err(_) => {}
                Ok(Incoming::Request(r)) => {
                    // What is accepted encodes back to the same request.
                    prop_assert_eq!(parse_request(&r.to_datagram().unwrap()), Ok(Incoming::Request(r)));
                }
                Ok(Incoming::Refused { token, .. }) => prop_assert!(token.len() <= 8),
                Ok(_) => prop_assert!(d.len() >= 4),
            }
        }

        /// A datagram cut short is dropped, or (cut between two options or
        /// inside the payload) is the same request with fewer options or a
        /// shorter payload.
        #[test]
        fn a_truncated_request_is_dropped_or_a_prefix(r in any_request()) {
            let d = r.to_datagram().unwrap();
            for n in 0..d.len() {
                let Ok(parsed) = parse_request(&d[..n]) else {
                    prop_assert_eq!(parse_request(&d[..n]), Err(Malformed::Unparsable));
                    continue;
                };
                let Incoming::Request(t) = parsed else {
                    return Err(TestCaseError::fail(format!("{parsed:?} from {n} bytes")));
                };
                prop_assert_eq!((t.confirmable, t.mid, &t.token, t.method),
                    (r.confirmable, r.mid, &r.token, r.method));
                prop_assert!(r.path.starts_with(&t.path) && r.query.starts_with(&t.query));
                prop_assert!(r.payload.starts_with(&t.payload));
                prop_assert!(t.content_format.is_none() || t.content_format == r.content_format);
                prop_assert!(t.observe.is_none() || t.observe == r.observe);
                prop_assert!(t.block1.is_none() || t.block1 == r.block1);
                prop_assert!(t.block2.is_none() || t.block2 == r.block2);
                prop_assert!(t.size1.is_none() || t.size1 == r.size1);
                if n > d.len() - r.payload.len() {
                    // Only the payload is cut.
                    let whole = Request { payload: t.payload.clone(), ..r.clone() };
                    prop_assert_eq!(t.payload.len(), n - (d.len() - r.payload.len()));
                    prop_assert_eq!(t, whole);
                }
            }
        }
    }
}
