//! Arbitrary datagrams through everything in moat-coap that reads a peer's
//! bytes (issue 6): what the endpoint runs before OpenSSL sees a datagram
//! (`hello::ClientHello::parse` on every datagram from an address without
//! a session, `dtls::is_client_hello` and `dtls::psk_identity` on the
//! handshake datagrams of a peer), then `parse_request` on what a peer
//! sends inside DTLS (or in the clear), then the block-wise transfer logic
//! on the Block1 and Block2 options of what it accepts.
//!
//! None may panic. A ClientHello is answered by a smaller datagram, and its
//! stand-in without the cookie is a ClientHello again. A request
//! `parse_request` accepts must come back the same once encoded again with
//! coap-lite, and the block functions must agree with a model of RFC 7959
//! written out here. The message id doubles as the upload limit and the
//! server's block size, so the fuzzer varies them too.

#![no_main]

use coap_lite::block_handler::BlockValue;
use coap_lite::Packet;
use libfuzzer_sys::fuzz_target;
use moat_coap::fuzzing::{Piece, Upload, block_size, piece};
use moat_coap::hello::ClientHello;
use moat_coap::{Incoming, Malformed, Request, dtls, parse_request};

/// Pieces of an upload sent before the one in the datagram, at most (a
/// Block1 number goes up to 4095; filling them all would be slow).
const PRIOR_PIECES: u16 = 8;


/// The Block1 piece after the pieces before it (as many as fit in
/// `PRIOR_PIECES`), checked against what RFC 7959 §2.3 asks of it.
fn upload(b1: &BlockValue, payload: &[u8], limit: usize) {
    let size = b1.size();
    let mut u = Upload::new(Vec::new(), None);
    let prior = b1.num.min(PRIOR_PIECES);
    let filler = vec![0xa5; size];
    for num in 0..prior {
        let earlier = BlockValue {
            num,
            more: true,
            size_exponent: b1.size_exponent,
        };
        assert_eq!(u.add(&earlier, &filler, usize::MAX), Piece::More);
    }
    let before = usize::from(prior) * size;
    let expected = if b1.num != prior || (b1.more && payload.len() != size) {
        Piece::OutOfOrder
    } else if before + payload.len() > limit {
        Piece::TooLarge
    } else if b1.more {
        Piece::More
    } else {
        Piece::Done
    };
    assert_eq!(u.add(b1, payload, limit), expected);
    if matches!(expected, Piece::More | Piece::Done) {
        assert_eq!(u.body.len(), before + payload.len());
        assert!(u.body.ends_with(payload));
    } else {
        assert_eq!(u.body.len(), before);
    }
}

/// The Block2 piece a request asks of `body` (here its own payload).
fn download(server: usize, b2: Option<&BlockValue>, body: &[u8]) {
    let size = block_size(server, b2);
    assert!(size.is_power_of_two() && (16..=1024).contains(&size));
    assert!(b2.is_none_or(|b| size <= b.size()));
    let num = b2.map_or(0, |b| usize::from(b.num));
    let start = num * size;
    match piece(body, num, size) {
        None => assert!(num > 0 && start >= body.len()),
        Some((data, value)) => {
            assert!(start < body.len() || num == 0);
            let end = (start + size).min(body.len());
            assert_eq!(data, &body[start..end]);
            assert_eq!((usize::from(value.num), value.size()), (num, size));
            assert_eq!(value.more, end < body.len());
        }
    }
}

fn check(data: &[u8], r: &Request) {
    // coap-lite writes back what it parsed byte for byte (what
    // `parse_request` relies on to find a bare payload marker).
    let packet = Packet::from_bytes(data).expect("what was parsed parses");
    assert_eq!(packet.to_bytes_unlimited().as_deref(), Ok(data));
    assert!(r.token.len() <= 8);
    assert!(r.observe.is_none_or(|o| o < 1 << 24));
    for b in [&r.block1, &r.block2].into_iter().flatten() {
        assert!(b.size_exponent < 7 && b.num < 1 << 12);
    }
    let again = parse_request(&r.to_datagram().expect("a parsed request encodes"));
    assert_eq!(again, Ok(Incoming::Request(r.clone())));

    let limit = usize::from(r.mid);
    if let Some(b1) = &r.block1 {
        upload(b1, &r.payload, limit);
    }
    download(limit, r.block2.as_ref(), &r.payload);
}

/// What the endpoint does with a first datagram from a new address.
fn client_hello(data: &[u8], hello: &ClientHello<'_>) {
    // The two pre-parsers agree on what opens a handshake.
    assert!(dtls::is_client_hello(data));
    assert!(hello.cookie.len() <= 255 && subslice(data, hello.cookie).is_some());
    // No amplification: the answer (with a cookie as DtlsContext makes
    // them) is smaller than what it answers.
    let answer = hello.verify_request(&[0x5a; 16]);
    assert!(answer.len() < data.len());
    assert!(!dtls::is_client_hello(&answer) && ClientHello::parse(&answer).is_none());
    // The stand-in is the record less the cookie, and a ClientHello with
    // no cookie, which taking the cookie out again leaves as it is (but
    // for the record sequence number, bytes 5..11).
    let record_len = 13 + usize::from(u16::from_be_bytes([data[11], data[12]]));
    let stand_in = hello.without_cookie();
    assert_eq!(stand_in.len() + hello.cookie.len(), record_len);
    let again = ClientHello::parse(&stand_in).expect("the stand-in is a ClientHello");
    assert!(again.cookie.is_empty());
    let twice = again.without_cookie();
    assert_eq!(
        (&twice[..5], &twice[11..]),
        (&stand_in[..5], &stand_in[11..])
    );
}

/// Where `inner` starts in `outer`, if it lies within it.
fn subslice(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let at = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (at + inner.len() <= outer.len()).then_some(at)
}

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = ClientHello::parse(data) {
        client_hello(data, &hello);
    }
    let hello = dtls::is_client_hello(data);
    // A handshake record (type 22) of epoch 0 (bytes 3..5).
    assert!(!hello || (data[0] == 22 && data[3..5] == [0, 0]));
    if let Some(identity) = dtls::psk_identity(data) {
        // It lies within the datagram, after a record and handshake header
        // and its own length.
        assert!(subslice(data, identity).is_some_and(|at| at >= 13 + 12 + 2));
    }

    match parse_request(data) {
        Err(Malformed::Version) => assert_ne!(data[0] >> 6, 1),
        Err(_) => assert!(data.first().is_none_or(|b| b >> 6 == 1)),
        Ok(Incoming::Request(r)) => check(data, &r),
        Ok(Incoming::Refused { token, .. }) => assert!(token.len() <= 8),
        // Empty messages are the header alone.
        Ok(Incoming::Ack(_) | Incoming::Ping(_)) => assert_eq!(data.len(), 4),
        Ok(Incoming::Reset(_)) => assert!(data.len() >= 4),
    }
});
