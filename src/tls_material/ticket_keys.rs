//! TLS session tickets sealed with keys shared by several instances (`tls.ticket_keys`), so that a client that got a
//! ticket from one instance resumes on another: after a failover the survivor does abbreviated handshakes instead of
//! a full handshake (certificate signature, key exchange) per reconnecting client.
//!
//! # The key file
//!
//! One key per line, each the standard base64 (with `=` padding) of 80 random bytes, as HAProxy's
//! `tls-ticket-keys` files: `openssl rand 80 | base64 -w0` makes one. Blank lines and lines starting with `#` are
//! skipped. The first key seals every new ticket; every key listed opens tickets, so keys are rotated by writing a
//! new key first, keeping the previous ones below it, and reloading every instance; a key removed from the file
//! opens nothing from the next reload on.
//!
//! An 80-byte key is a 16-byte name (which key sealed a ticket, sent in clear in the ticket) and 64 secret bytes,
//! from which HKDF-SHA256 derives the AES-256-GCM key. The length is HAProxy's so that the same generator and the
//! same rotation tooling serve both; the tickets themselves are not interchangeable (HAProxy's are OpenSSL's
//! AES-CBC + HMAC tickets).
//!
//! # A ticket
//!
//! `name (16) || nonce (12) || AES-256-GCM(issue time (8, seconds since the epoch, big-endian) || rustls's session
//! state) || tag (16)`, the name also authenticated as associated data. The nonce is random: AES-GCM stays safe for
//! 2^32 tickets per key, far more than a key seals between rotations. A ticket opens for [`LIFETIME_SECS`] after it
//! was issued (and tells the client so): past that, or under a key no longer listed, the client does a full
//! handshake. Tickets are attacker-supplied bytes: every length is checked before use, anything that does not open
//! is simply not a ticket.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of one key in the file (after base64 decoding).
pub const KEY_LEN: usize = 80;
/// Bytes of a key's name, at the start of the key and of every ticket it seals.
const NAME_LEN: usize = 16;
/// Bytes of the issue time at the start of a ticket's sealed part.
const TIME_LEN: usize = 8;
/// How long a ticket resumes a session: two hours, the span of a failover and its reconnect storm with margin,
/// short enough that a ticket (which holds the session's secret) is not worth much for long.
pub const LIFETIME_SECS: u32 = 2 * 3600;
/// Tickets issued up to this far in the future are accepted: another instance's clock may be ahead of ours.
const CLOCK_SKEW_SECS: u64 = 300;
/// Salt of the key derivation: the same 64 bytes used elsewhere give another key.
const KDF_SALT: &[u8] = b"mqtt-lb tls session ticket key";

/// One key of the file.
struct TicketKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// The keys of a `tls.ticket_keys` file: rustls's ticket producer for a listener.
pub struct TicketKeys {
    /// In file order: the first seals, all open.
    keys: Vec<TicketKey>,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the secret never reaches a log.
        let names: Vec<String> = self.keys.iter().map(|k| hex(&k.name)).collect();
        f.debug_struct("TicketKeys").field("names", &names).finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a key file; the message names the file and, for a bad key, its line.
pub fn load(path: &Path) -> Result<Arc<TicketKeys>, String> {
    let text = crate::named_file::read_text(path, crate::named_file::FileKind::TicketKeys)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map(Arc::new).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the text of a key file.
pub fn parse(text: &str) -> Result<TicketKeys, String> {
    let mut keys: Vec<TicketKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let bytes = decode_base64(line).ok_or_else(|| {
            format!("line {n}: not base64 (one key per line, as `openssl rand {KEY_LEN} | base64 -w0` writes)")
        })?;
        let material: &[u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "line {n}: a key is {KEY_LEN} bytes (`openssl rand {KEY_LEN} | base64 -w0`), this one is {}",
                bytes.len()
            )
        })?;
        let key = derive(material).ok_or_else(|| format!("line {n}: the key derivation failed"))?;
        if keys.iter().any(|k| k.name == key.name) {
            return Err(format!(
                "line {n}: its first 16 bytes (the key's name) are another key's: a key is listed twice"
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!("no key (one base64 line of {KEY_LEN} bytes: `openssl rand {KEY_LEN} | base64 -w0`)"));
    }
    Ok(TicketKeys { keys, rng: SystemRandom::new() })
}

/// The name and AEAD key of 80 bytes of key material.
fn derive(material: &[u8; KEY_LEN]) -> Option<TicketKey> {
    let (name, secret) = material.split_first_chunk::<NAME_LEN>()?;
    let prk = Salt::new(HKDF_SHA256, KDF_SALT).extract(secret);
    let okm = prk.expand(&[b"aes-256-gcm"], &AES_256_GCM).ok()?;
    Some(TicketKey { name: *name, aead: LessSafeKey::new(UnboundKey::from(okm)) })
}

/// Strict standard base64 with padding; `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let groups = bytes.len() / 4;
    let mut out = Vec::with_capacity(groups * 3);
    for (g, quad) in bytes.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut acc = 0u32;
        for c in quad.iter().take(4 - pad) {
            acc = (acc << 6) | value(*c)?;
        }
        acc <<= 6 * pad as u32;
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.extend([b0, b1, b2].into_iter().take(3 - pad));
    }
    Some(out)
}

/// Seconds since the epoch (0 if the clock is before it, which no ticket then outlives).
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TicketKeys {
    /// A ticket for `plain` issued at `now`, under the first key.
    fn seal_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let header = NAME_LEN + aead::NONCE_LEN;
        let mut ticket = Vec::with_capacity(header + TIME_LEN + plain.len() + AES_256_GCM.tag_len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                ticket.get_mut(header..)?,
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    /// The session state in `ticket` if a listed key sealed it and it has not expired at `now`.
    fn open_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_first_chunk::<NAME_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<{ aead::NONCE_LEN }>()?;
        // The name is public (it travels in clear); only the AEAD below has to be constant-time.
        let key = self.keys.iter().find(|k| &k.name == name)?;
        let mut buf = sealed.to_vec();
        let plain_len =
            key.aead.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(name), &mut buf).ok()?.len();
        buf.truncate(plain_len);
        let (issued, _) = buf.split_first_chunk::<TIME_LEN>()?;
        let issued = u64::from_be_bytes(*issued);
        let expired = now.saturating_sub(issued) > u64::from(LIFETIME_SECS);
        if expired || issued > now.saturating_add(CLOCK_SKEW_SECS) {
            return None;
        }
        buf.drain(..TIME_LEN);
        Some(buf)
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, now_secs())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, now_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    /// A base64 key line of 80 bytes made from `seed` (deterministic, for tests only).
    fn key_line(seed: u8) -> String {
        let bytes: Vec<u8> = (0..KEY_LEN as u8).map(|i| i.wrapping_mul(37).wrapping_add(seed)).collect();
        encode_base64(&bytes)
    }

    fn encode_base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut b = [0u8; 3];
            b[..chunk.len()].copy_from_slice(chunk);
            let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_decodes_what_the_encoder_wrote_and_nothing_else() {
        for len in 0..12 {
            let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(91)).collect();
            let text = encode_base64(&bytes);
            if len == 0 {
                assert_eq!(decode_base64(&text), None);
            } else {
                assert_eq!(decode_base64(&text), Some(bytes), "{text}");
            }
        }
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        for bad in ["aGVsbG8", "aGVs*G8=", "aG=sbG8=", "a===", "aGVsbG8=aGVs", "aGVsbG8 "] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_ticket_opens_under_any_listed_key_and_only_those() {
        let (a, b, c) = (key_line(1), key_line(2), key_line(3));
        let old = parse(&format!("{a}\n")).unwrap();
        let rotated = parse(&format!("# new first\n{b}\n\n{a}\n")).unwrap();
        let retired = parse(&format!("{b}\n")).unwrap();
        let other = parse(&format!("{c}\n")).unwrap();

        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(rotated.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(retired.decrypt(&ticket), None, "a removed key still opens tickets");
        assert_eq!(other.decrypt(&ticket), None);

        // After the rotation, the new key seals: the old file cannot open it, the retired one can.
        let fresh = rotated.encrypt(b"newer").unwrap();
        assert_eq!(old.decrypt(&fresh), None);
        assert_eq!(retired.decrypt(&fresh).as_deref(), Some(&b"newer"[..]));
        // Random nonces: the same state seals differently each time.
        assert_ne!(rotated.encrypt(b"newer").unwrap(), fresh);
        assert_eq!(rotated.lifetime(), LIFETIME_SECS);
    }

    #[test]
    fn a_ticket_expires_after_its_lifetime() {
        let keys = parse(&key_line(9)).unwrap();
        let issued = 1_700_000_000;
        let ticket = keys.seal_at(b"s", issued).unwrap();
        let life = u64::from(LIFETIME_SECS);
        assert!(keys.open_at(&ticket, issued + life).is_some());
        assert!(keys.open_at(&ticket, issued + life + 1).is_none());
        // Another instance's clock a little ahead is fine; a ticket from far in the future is not.
        assert!(keys.open_at(&ticket, issued - CLOCK_SKEW_SECS).is_some());
        assert!(keys.open_at(&ticket, issued - CLOCK_SKEW_SECS - 1).is_none());
    }

    #[test]
    fn truncated_garbled_or_random_tickets_are_refused_never_a_panic() {
        let keys = parse(&format!("{}\n{}\n", key_line(4), key_line(5))).unwrap();
        let ticket = keys.encrypt(&[0xab; 100]).unwrap();
        for len in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..len]), None, "truncated to {len}");
        }
        for i in 0..ticket.len() {
            for bit in [0x01, 0x80] {
                let mut bad = ticket.clone();
                bad[i] ^= bit;
                assert_eq!(keys.decrypt(&bad), None, "byte {i} flipped");
            }
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(keys.decrypt(&longer), None);
        // Random bytes, some behind a valid key name (so that the AEAD itself has to refuse them).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000usize {
            let mut bytes: Vec<u8> = (0..n % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if n % 2 == 0 && bytes.len() >= NAME_LEN {
                bytes[..NAME_LEN].copy_from_slice(&ticket[..NAME_LEN]);
            }
            assert_eq!(keys.decrypt(&bytes), None);
        }
        // The untouched ticket still opens.
        assert!(keys.decrypt(&ticket).is_some());
    }

    #[test]
    fn bad_files_say_what_is_wrong_and_where() {
        let short = encode_base64(&[7; 48]);
        let cases = [
            ("", "no key"),
            ("# only a comment\n\n", "no key"),
            ("not base64!\n", "line 1: not base64"),
            (&format!("{}\n{short}\n", key_line(1)), "line 2: a key is 80 bytes"),
            (&format!("{}\n{}\n", key_line(1), key_line(1)), "line 2: its first 16 bytes"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(expected), "{text:?}: {e}");
        }
        // The secret never shows in a debug print.
        let keys = parse(&key_line(1)).unwrap();
        let printed = format!("{keys:?}");
        assert!(printed.contains(&hex(&keys.keys[0].name)) && printed.len() < 100, "{printed}");
    }
}
