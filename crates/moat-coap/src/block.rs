//! Block-wise transfers (RFC 7959): a request body arriving in Block1
//! pieces is assembled in order, within a size limit; a representation
//! larger than one block goes out in Block2 pieces, the rest fetched by the
//! client with the same ETag.

use coap_lite::block_handler::BlockValue;

/// An upload in progress: one per peer and resource path (RFC 7959 §2.3
/// ties the blocks of one body to the endpoint and the request URI).
#[derive(Debug)]
pub struct Upload {
    pub(crate) path: Vec<String>,
    pub(crate) content_format: Option<u16>,
    pub body: Vec<u8>,
    next: u32,
    size: usize,
}

/// What a Block1 piece did.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Stored; more to come: answer 2.31 Continue.
    More,
    /// The last piece: the whole body is in the upload.
    Done,
    /// Not the piece expected next, or a different block size: 4.08.
    OutOfOrder,
    /// Past the limit: 4.13.
    TooLarge,
}

impl Upload {
    pub fn new(path: Vec<String>, content_format: Option<u16>) -> Self {
        Self {
            path,
            content_format,
            body: Vec::new(),
            next: 0,
            size: 0,
        }
    }

    /// Adds piece `b` carrying `data`, within `limit` bytes in all.
    pub fn add(&mut self, b: &BlockValue, data: &[u8], limit: usize) -> Piece {
        let size = b.size();
        if u32::from(b.num) != self.next || (self.next > 0 && size != self.size) {
            return Piece::OutOfOrder;
        }
        // Every piece but the last is exactly one block long.
        if b.more && data.len() != size {
            return Piece::OutOfOrder;
        }
        if self.body.len() + data.len() > limit {
            return Piece::TooLarge;
        }
        self.size = size;
        self.next += 1;
        self.body.extend_from_slice(data);
        if b.more { Piece::More } else { Piece::Done }
    }
}

/// Block `num` of `body` cut into blocks of `size`: the piece and its
/// Block2 value; `None` past the end.
pub fn piece(body: &[u8], num: usize, size: usize) -> Option<(&[u8], BlockValue)> {
    let start = num.checked_mul(size)?;
    if start > body.len() || (start == body.len() && num > 0) {
        return None;
    }
    let end = (start + size).min(body.len());
    let more = end < body.len();
    let value = BlockValue::new(num, more, size).ok()?;
    Some((&body[start..end], value))
}

/// The block size to use: the server's, or the smaller one a client asked
/// for; always a power of two from 16 to 1024.
pub fn block_size(server: usize, asked: Option<&BlockValue>) -> usize {
    let server = server.clamp(16, 1024).next_power_of_two().min(1024);
    asked.map_or(server, |b| b.size().min(server))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(num: usize, more: bool, size: usize) -> BlockValue {
        BlockValue::new(num, more, size).unwrap()
    }

    #[test]
    fn an_upload_is_assembled_in_order_within_the_limit() {
        let mut u = Upload::new(vec![], None);
        assert_eq!(u.add(&b(0, true, 16), &[1; 16], 40), Piece::More);
        assert_eq!(u.add(&b(2, true, 16), &[1; 16], 40), Piece::OutOfOrder);
        assert_eq!(u.add(&b(1, true, 32), &[1; 32], 40), Piece::OutOfOrder);
        assert_eq!(u.add(&b(1, true, 16), &[1; 15], 40), Piece::OutOfOrder);
        assert_eq!(u.add(&b(1, true, 16), &[2; 16], 40), Piece::More);
        assert_eq!(u.add(&b(2, false, 16), &[3; 9], 40), Piece::TooLarge);
        assert_eq!(u.add(&b(2, false, 16), &[3; 8], 40), Piece::Done);
        assert_eq!(u.body.len(), 40);
    }

    #[test]
    fn sizes_follow_the_smaller_side() {
        assert_eq!(block_size(1024, None), 1024);
        assert_eq!(block_size(1024, Some(&b(0, false, 64))), 64);
        assert_eq!(block_size(100, None), 128);
        assert_eq!(block_size(4096, None), 1024);
    }

    proptest! {
        #[test]
        fn pieces_cover_the_body_once(len in 0usize..5000, exp in 0u32..7) {
            let size = 16usize << exp;
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let mut num = 0;
            while let Some((p, v)) = piece(&body, num, size) {
                prop_assert_eq!(usize::from(v.num), num);
                out.extend_from_slice(p);
                num += 1;
                if !v.more { break; }
            }
            prop_assert_eq!(out, body);
            // And an upload of those pieces gives the body back.
            let mut u = Upload::new(vec![], None);
            let mut n = 0;
            let whole = u8s(len);
            while let Some((p, v)) = piece(&whole, n, size) {
                let r = u.add(&v, p, usize::MAX);
                n += 1;
                if r == Piece::Done { break; }
                prop_assert_eq!(r, Piece::More);
            }
            prop_assert_eq!(u.body, u8s(len));
        }

        /// Whatever Block1 a peer sends after `prior` pieces is taken only
        /// in order, whole, and within the limit.
        #[test]
        fn a_piece_is_taken_only_in_order(
            prior in 0u16..4,
            num in 0u16..4096,
            more: bool,
            exp in 0u8..7,
            len in 0usize..1100,
            limit in 0usize..5000,
        ) {
            let size = 16usize << exp;
            let mut u = Upload::new(vec![], None);
            for n in 0..prior {
                let earlier = BlockValue { num: n, more: true, size_exponent: exp };
                prop_assert_eq!(u.add(&earlier, &u8s(size), usize::MAX), Piece::More);
            }
            let before = usize::from(prior) * size;
            let expected = if num != prior || (more && len != size) {
                Piece::OutOfOrder
            } else if before + len > limit {
                Piece::TooLarge
            } else if more {
                Piece::More
            } else {
                Piece::Done
            };
            let b1 = BlockValue { num, more, size_exponent: exp };
            let taken = matches!(expected, Piece::More | Piece::Done);
            prop_assert_eq!(u.add(&b1, &u8s(len), limit), expected);
            prop_assert_eq!(u.body.len(), before + if taken { len } else { 0 });
        }
    }

    fn u8s(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }
}
