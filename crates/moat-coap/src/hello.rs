//! The first ClientHello from an address, answered without keeping state.
//!
//! RFC 6347 §4.2.1: a server answers a ClientHello without a valid cookie
//! with a HelloVerifyRequest and forgets it, so an address it has not heard
//! back from (perhaps a forged one) costs it nothing. OpenSSL does this
//! statelessly only through `DTLSv1_listen`, which the `openssl` crate does
//! not wrap (and this workspace forbids `unsafe`), so the endpoint does it
//! here: a ClientHello without a valid cookie gets a HelloVerifyRequest
//! built from the same cookie OpenSSL's callbacks check, and only one with
//! a valid cookie gets a task and an OpenSSL session.
//!
//! That session must see the exchange from its start: it is first given the
//! ClientHello with the cookie taken out and message_seq 0 (its answer, a
//! HelloVerifyRequest with the same cookie, is dropped), then the real one.
//! The transcript that the Finished messages cover starts at the ClientHello
//! with the cookie (RFC 6347 §4.2.1), so the stand-in changes nothing the
//! client sees.

/// A DTLS record header: type, version (2), epoch (2), sequence number (6),
/// length (2).
const RECORD_HEADER: usize = 13;
/// A DTLS handshake header: type, length (3), message_seq (2),
/// fragment_offset (3), fragment_length (3).
const HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS 1.0's version number: what a HelloVerifyRequest carries whatever
/// version follows (RFC 6347 §4.2.1), as OpenSSL's own does.
const DTLS1_VERSION: [u8; 2] = [0xfe, 0xff];
/// client_version (2) and random (32) before the session id.
const HELLO_FIXED: usize = 34;

/// A whole (unfragmented) ClientHello at the start of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The record's sequence number, echoed in the HelloVerifyRequest.
    record_seq: [u8; 6],
    message_seq: u16,
    /// The record, and where the cookie (its length byte, then the bytes)
    /// sits in it.
    record: &'a [u8],
    cookie_at: usize,
    pub cookie: &'a [u8],
}

impl<'a> ClientHello<'a> {
    /// The ClientHello in the first record of `datagram`, if the record is
    /// an epoch-0 handshake record holding exactly one whole ClientHello.
    /// A fragmented ClientHello is not taken (no client this serves sends
    /// one; each fragment would need state).
    pub fn parse(datagram: &'a [u8]) -> Option<Self> {
        let header = datagram.get(..RECORD_HEADER)?;
        if header[0] != CONTENT_HANDSHAKE || header[3..5] != [0, 0] {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let record = datagram.get(..RECORD_HEADER + len)?;
        let hs = &record[RECORD_HEADER..];
        let h = hs.get(..HANDSHAKE_HEADER)?;
        let length = u24(&h[1..4]);
        let offset = u24(&h[6..9]);
        let fragment = u24(&h[9..12]);
        if h[0] != CLIENT_HELLO
            || offset != 0
            || fragment != length
            || HANDSHAKE_HEADER + length != hs.len()
        {
            return None;
        }
        let body = &hs[HANDSHAKE_HEADER..];
        let session_len = usize::from(*body.get(HELLO_FIXED)?);
        let cookie_len_at = HELLO_FIXED + 1 + session_len;
        let cookie_len = usize::from(*body.get(cookie_len_at)?);
        let cookie = body.get(cookie_len_at + 1..cookie_len_at + 1 + cookie_len)?;
        let mut record_seq = [0u8; 6];
        record_seq.copy_from_slice(&header[5..11]);
        Some(Self {
            record_seq,
            message_seq: u16::from_be_bytes([h[4], h[5]]),
            record,
            cookie_at: RECORD_HEADER + HANDSHAKE_HEADER + cookie_len_at,
            cookie,
        })
    }

    /// The HelloVerifyRequest that answers this ClientHello with `cookie`:
    /// 28 bytes and the cookie, always smaller than any ClientHello.
    pub fn verify_request(&self, cookie: &[u8]) -> Vec<u8> {
        let cookie_len = u8::try_from(cookie.len()).expect("cookies are at most 255 bytes");
        let body_len = 3 + cookie.len();
        let mut out = Vec::with_capacity(RECORD_HEADER + HANDSHAKE_HEADER + body_len);
        out.push(CONTENT_HANDSHAKE);
        out.extend_from_slice(&DTLS1_VERSION);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.record_seq);
        out.extend_from_slice(
            &(u16::try_from(HANDSHAKE_HEADER + body_len).unwrap_or(u16::MAX)).to_be_bytes(),
        );
        out.push(HELLO_VERIFY_REQUEST);
        out.extend_from_slice(&be24(body_len));
        out.extend_from_slice(&self.message_seq.to_be_bytes());
        out.extend_from_slice(&be24(0));
        out.extend_from_slice(&be24(body_len));
        out.extend_from_slice(&DTLS1_VERSION);
        out.push(cookie_len);
        out.extend_from_slice(cookie);
        out
    }

    /// The ClientHello as it was before the cookie: the cookie taken out,
    /// message_seq 0, the lengths shortened to match and the record
    /// sequence number one lower (the session's replay window would drop
    /// the real hello if both had the same). What the client sent first,
    /// as far as the server's session can tell.
    pub fn without_cookie(&self) -> Vec<u8> {
        let n = self.cookie.len();
        let mut out = Vec::with_capacity(self.record.len() - n);
        out.extend_from_slice(&self.record[..self.cookie_at]);
        out.push(0);
        out.extend_from_slice(&self.record[self.cookie_at + 1 + n..]);
        let record_len = out.len() - RECORD_HEADER;
        let message_len = record_len - HANDSHAKE_HEADER;
        out[11..13].copy_from_slice(&(u16::try_from(record_len).unwrap_or(u16::MAX)).to_be_bytes());
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&self.record_seq);
        let earlier = u64::from_be_bytes(seq).saturating_sub(1).to_be_bytes();
        out[5..11].copy_from_slice(&earlier[2..]);
        let h = RECORD_HEADER;
        out[h + 1..h + 4].copy_from_slice(&be24(message_len));
        out[h + 4..h + 6].copy_from_slice(&[0, 0]);
        out[h + 9..h + 12].copy_from_slice(&be24(message_len));
        out
    }
}

fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])
}

fn be24(n: usize) -> [u8; 3] {
    let b = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    [b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello record: version, random, session id, cookie, then
    /// `rest` (cipher suites, compression, extensions) as given.
    fn hello(
        record_seq: u64,
        message_seq: u16,
        session: &[u8],
        cookie: &[u8],
        rest: &[u8],
    ) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7u8; 32]);
        body.push(session.len() as u8);
        body.extend_from_slice(session);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(rest);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&be24(body.len()));
        hs.extend_from_slice(&message_seq.to_be_bytes());
        hs.extend_from_slice(&be24(0));
        hs.extend_from_slice(&be24(body.len()));
        hs.extend_from_slice(&body);
        let mut r = vec![CONTENT_HANDSHAKE, 0xfe, 0xff, 0, 0];
        r.extend_from_slice(&record_seq.to_be_bytes()[2..]);
        r.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        r.extend_from_slice(&hs);
        r
    }

    #[test]
    fn a_hello_verify_request_echoes_the_sequence_numbers_and_is_smaller() {
        let ch = hello(5, 0, &[], &[], &[0, 2, 0xc0, 0xa8, 1, 0]);
        let parsed = ClientHello::parse(&ch).expect("a ClientHello");
        assert!(parsed.cookie.is_empty());
        let hvr = parsed.verify_request(&[9u8; 16]);
        assert!(hvr.len() < ch.len(), "{} < {}", hvr.len(), ch.len());
        assert_eq!(hvr[0], CONTENT_HANDSHAKE);
        assert_eq!(&hvr[5..11], &ch[5..11], "record sequence number echoed");
        assert_eq!(hvr[13], HELLO_VERIFY_REQUEST);
        assert_eq!(&hvr[17..19], &ch[17..19], "message_seq echoed");
        assert_eq!(&hvr[hvr.len() - 16..], &[9u8; 16]);
    }

    #[test]
    fn taking_the_cookie_out_gives_the_first_hello_back() {
        let rest = [0, 2, 0xc0, 0xa8, 1, 0, 0, 4, 0, 0x17, 0, 0];
        let first = hello(0, 0, &[1, 2, 3], &[], &rest);
        let second = hello(1, 1, &[1, 2, 3], &[0xaa; 16], &rest);
        let parsed = ClientHello::parse(&second).expect("a ClientHello");
        assert_eq!(parsed.cookie, &[0xaa; 16]);
        assert_eq!(parsed.without_cookie(), first);
    }

    #[test]
    fn fragments_other_records_and_short_datagrams_are_not_taken() {
        let ch = hello(0, 0, &[], &[], &[0, 2, 0xc0, 0xa8, 1, 0]);
        let mut fragment = ch.clone();
        fragment[RECORD_HEADER + 11] -= 1;
        assert!(ClientHello::parse(&fragment).is_none());
        let mut epoch1 = ch.clone();
        epoch1[4] = 1;
        assert!(ClientHello::parse(&epoch1).is_none());
        let mut alert = ch.clone();
        alert[0] = 21;
        assert!(ClientHello::parse(&alert).is_none());
        for n in 0..ch.len() {
            assert!(ClientHello::parse(&ch[..n]).is_none(), "{n}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_not_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(h) = ClientHello::parse(&bytes) {
                let _ = h.verify_request(&[0u8; 16]);
                let stand_in = h.without_cookie();
                let again = ClientHello::parse(&stand_in).expect("the stand-in is a ClientHello");
                prop_assert!(again.cookie.is_empty());
            }
        }

        #[test]
        fn stand_ins_parse_with_no_cookie(session in proptest::collection::vec(any::<u8>(), 0..32),
                                          cookie in proptest::collection::vec(any::<u8>(), 0..=32),
                                          rest in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ch = hello(3, 1, &session, &cookie, &rest);
            let parsed = ClientHello::parse(&ch).expect("a ClientHello");
            prop_assert_eq!(parsed.cookie, &cookie[..]);
            let stand_in = parsed.without_cookie();
            prop_assert_eq!(stand_in.len(), ch.len() - cookie.len());
            let again = ClientHello::parse(&stand_in).expect("a ClientHello");
            prop_assert!(again.cookie.is_empty());
            prop_assert_eq!(again.message_seq, 0);
        }
    }
}
