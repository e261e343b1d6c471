//! A byte-string writer for test fixtures: MQTT's primitive encodings, nothing
//! more. It exists so the inputs (including deliberately malformed ones) are
//! written independently of either candidate crate; it is not a codec.

/// Appends MQTT primitives to a buffer.
#[derive(Default, Clone)]
pub struct Wire(pub Vec<u8>);

impl Wire {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Raw bytes, no length prefix.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    /// A two-byte length prefix followed by the bytes (UTF-8 string or binary
    /// data; the bytes are written as given, valid UTF-8 or not).
    pub fn str(self, b: impl AsRef<[u8]>) -> Self {
        let b = b.as_ref();
        let len = u16::try_from(b.len()).expect("fixture string fits a u16 length");
        self.u16(len).raw(b)
    }

    /// A variable byte integer in its minimal encoding.
    pub fn varint(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&varint(v));
        self
    }

    /// A v5 property block: its length as a variable byte integer, then the
    /// properties.
    pub fn props(self, props: Wire) -> Self {
        let len = u32::try_from(props.0.len()).expect("property block fits a u32");
        self.varint(len).raw(&props.0)
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// The minimal variable byte integer encoding of `v` (MQTT 5 §1.5.5).
pub fn varint(mut v: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            return out;
        }
    }
}

/// A whole packet: the first byte, the remaining length (minimal encoding)
/// and the body.
pub fn packet(first_byte: u8, body: Wire) -> Vec<u8> {
    let len = u32::try_from(body.0.len()).expect("fixture body fits a u32");
    let mut out = vec![first_byte];
    out.extend_from_slice(&varint(len));
    out.extend_from_slice(&body.0);
    out
}

/// A whole packet whose remaining length is written with the given bytes
/// instead of the minimal encoding (for malformed-length probes).
pub fn packet_with_length_bytes(first_byte: u8, length_bytes: &[u8], body: Wire) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend_from_slice(length_bytes);
    out.extend_from_slice(&body.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(16_383), [0xff, 0x7f]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(varint(268_435_455), [0xff, 0xff, 0xff, 0x7f]);
    }
}
