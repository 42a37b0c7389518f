//! The random and derived values of a WebSocket handshake and of client frames: the `Sec-WebSocket-Accept` answer
//! to a key (RFC 6455 section 4.2.2: base64 of the SHA-1 of the key and a fixed GUID), a client's key, and the
//! masking keys of client frames. SHA-1 and randomness come from ring, already the TLS crypto provider.

use ring::rand::{SecureRandom, SystemRandom};

/// The GUID every accept key is derived with.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for `key` (the client's `Sec-WebSocket-Key`, as sent).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64(ctx.finish().as_ref())
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub fn client_key() -> String {
    base64(&random::<16>())
}

/// A fresh masking key for one client frame (RFC 6455 section 5.3: unpredictable, from a strong source).
pub fn mask() -> [u8; 4] {
    random::<4>()
}

/// `N` random bytes; should the system source ever fail, bytes from the standard library's per-process random
/// hasher keys, never a fixed value.
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if SystemRandom::new().fill(&mut out).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            let bytes = h.finish().to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |v: u32, shift: u32| char::from(ALPHABET.get(((v >> shift) & 0x3f) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let v = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sextet(v, 18));
        out.push(sextet(v, 12));
        out.push(if chunk.len() > 1 { sextet(v, 6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(v, 0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn base64_of_rfc4648_vectors() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn client_keys_are_fresh_and_well_formed() {
        let (a, b) = (client_key(), client_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="));
    }
}
