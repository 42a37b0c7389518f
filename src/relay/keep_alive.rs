//! The keep-alive deadline of an MQTT relay: a client that sent nothing for `limits.keep_alive_factor` times its
//! keep-alive is gone (MQTT 3.1.1 section 3.1.2.10, MQTT 5 section 3.1.2.10: a broker closes it after one and a half
//! times), so the relay ends even when the broker does not notice, and the client's file descriptors are freed.
//!
//! The keep-alive is the CONNECT's until the broker answers; an MQTT 5 broker may impose another in its CONNACK
//! (Server Keep Alive), which the client must then use, so the relay reads the broker's first packet and follows
//! it (0 there turns the deadline off, as it turns keep-alive off for the client).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::config::KeepAliveFactor;
use crate::mqtt::server_keep_alive::server_keep_alive;
use crate::mqtt::{check_fixed_header, FrameError};

/// What the session knows of the client's keep-alive when the relay starts.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub factor: KeepAliveFactor,
    /// The CONNECT's keep-alive, in seconds.
    pub requested: u16,
    /// MQTT 5: the broker's CONNACK may set the keep-alive in force.
    pub follow_connack: bool,
}

/// Largest broker first packet read for its Server Keep Alive; a larger CONNACK (long reason string, many user
/// properties) is left unread and the CONNECT's keep-alive stays in force.
const MAX_CONNACK: usize = 4096;

/// How long the client may stay silent, shared by the watch and the broker side's CONNACK reader.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Milliseconds; 0 = no deadline.
    millis: AtomicU64,
    changed: Notify,
}

impl Window {
    pub(super) fn new(window: Option<Duration>) -> Window {
        let w = Window::default();
        w.millis.store(millis(window), Ordering::Relaxed);
        w
    }

    pub(super) fn set(&self, window: Option<Duration>) {
        self.millis.store(millis(window), Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Resolves at the next change of the window (enable it before looking at the window).
    pub(super) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    pub(super) fn get(&self) -> Option<Duration> {
        Some(self.millis.load(Ordering::Relaxed)).filter(|&m| m > 0).map(Duration::from_millis)
    }
}

fn millis(window: Option<Duration>) -> u64 {
    window.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// Reads the broker's first packet, as it passes, for an MQTT 5 Server Keep Alive; holds at most
/// [`MAX_CONNACK`] bytes, and nothing once that packet is past.
#[derive(Debug)]
pub(super) struct ConnackReader<'a> {
    factor: KeepAliveFactor,
    window: &'a Window,
    first: Vec<u8>,
    done: bool,
}

impl<'a> ConnackReader<'a> {
    pub(super) fn new(factor: KeepAliveFactor, window: &'a Window) -> ConnackReader<'a> {
        ConnackReader { factor, window, first: Vec::new(), done: false }
    }

    /// Bytes from the broker, in order.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            // Until the fixed header is complete, one byte at a time (it is at most 5); then the rest of the packet.
            let wanted = match check_fixed_header(&self.first) {
                Ok(header) => header.total_len(),
                Err(_) => self.first.len() + 1,
            };
            let take = wanted.saturating_sub(self.first.len()).min(bytes.len());
            let (now, rest) = bytes.split_at(take);
            self.first.extend_from_slice(now);
            bytes = rest;
            match check_fixed_header(&self.first) {
                Err(FrameError::Incomplete(_)) => {}
                Err(FrameError::MalformedRemainingLength) => self.finish(),
                Ok(header) if header.total_len() > MAX_CONNACK => self.finish(),
                Ok(header) if self.first.len() < header.total_len() => {}
                Ok(_) => {
                    if let Some(Some(seconds)) = server_keep_alive(&self.first) {
                        self.window.set(self.factor.window(seconds));
                    }
                    self.finish();
                }
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.first = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_connack_sets_the_window_whatever_the_split() {
        let factor = KeepAliveFactor(1500);
        // CONNACK v5: flags, reason, properties (Receive Maximum 10, Server Keep Alive 4); then a PUBLISH.
        let mut stream = vec![0x20, 0x09, 0x00, 0x00, 0x06, 0x21, 0x00, 0x0A, 0x13, 0x00, 0x04];
        stream.extend_from_slice(&[0x30, 0x03, 0x00, 0x01, b'x']);
        for split in 1..stream.len() {
            let window = Window::new(factor.window(60));
            let mut reader = ConnackReader::new(factor, &window);
            for chunk in stream.chunks(split) {
                reader.feed(chunk);
            }
            assert_eq!(window.get(), Some(Duration::from_secs(6)), "split {split}");
            assert!(reader.done && reader.first.capacity() == 0);
        }
        let window = Window::new(factor.window(60));
        ConnackReader::new(factor, &window).feed(&[0x20, 0x06, 0x00, 0x00, 0x03, 0x13, 0x00, 0x00]);
        assert_eq!(window.get(), None, "Server Keep Alive 0: no deadline");
    }

    #[test]
    fn a_connack_without_it_or_too_large_keeps_the_connect_keep_alive() {
        let factor = KeepAliveFactor(1500);
        let window = Window::new(factor.window(2));
        ConnackReader::new(factor, &window).feed(&[0x20, 0x02, 0x00, 0x00]);
        assert_eq!(window.get(), Some(Duration::from_secs(3)));
        let mut reader = ConnackReader::new(factor, &window);
        reader.feed(&[0x20, 0xFF, 0x7F]); // 16 KiB
        assert!(reader.done);
        assert_eq!(window.get(), Some(Duration::from_secs(3)));
    }
}
