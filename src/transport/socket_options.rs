//! The options every relayed TCP socket carries: TCP_NODELAY (MQTT packets are small and each one is due now) and
//! TCP keepalive (`limits.tcp_keepalive`: the kernel probes a silent peer and drops the connection when the probes
//! go unanswered, so a peer gone without a FIN (power cut, NAT entry expired) does not hold its relay for ever,
//! whatever the protocol above: MQTT keep-alive 0, `tcp` listeners).
//!
//! A client socket gets them from its listener: Linux copies TCP_NODELAY, SO_KEEPALIVE and the three probe settings
//! from a listening socket to each socket it accepts, so [`ListenerOptions`] sets them once per listener (and again
//! when a reload changes them) instead of five system calls on every accepted connection. A server socket is opened
//! by mqtt-lb and gets them from [`apply`] before its connect ([`super::connect`]).

use socket2::{SockRef, TcpKeepalive as Probes};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::TcpKeepalive;

/// Sets TCP_NODELAY and, with `settings`, keepalive on `socket` (None: keepalive left as the system has it, off by
/// default). A failure (an unusual socket) is logged at debug and the connection goes on without it.
pub fn apply(socket: &SockRef<'_>, settings: Option<&TcpKeepalive>) {
    let _ = socket.set_tcp_nodelay(true);
    let Some(k) = settings else { return };
    if let Err(e) = socket.set_tcp_keepalive(&probes(k)) {
        debug!(error = %e, "TCP keepalive not set");
    }
}

fn probes(k: &TcpKeepalive) -> Probes {
    Probes::new().with_time(k.idle).with_interval(k.interval).with_retries(k.count)
}

/// What a listening socket carries for the sockets it accepts: set at the first [`ListenerOptions::follow`], and
/// again only when the keepalive settings of the moment differ from what the listener has.
#[derive(Default)]
pub struct ListenerOptions {
    /// The keepalive settings the listener has: None until the first `follow`.
    set: Option<Option<TcpKeepalive>>,
}

impl ListenerOptions {
    /// Makes `listener` hand `settings` (and TCP_NODELAY) to the sockets it accepts from now on; a no-op when it
    /// already does. Returns whether the listener had other settings (so a socket it just accepted has those).
    /// A failure is logged and retried at the next call.
    pub fn follow(&mut self, listener: &TcpListener, settings: Option<&TcpKeepalive>) -> bool {
        if self.set.as_ref().is_some_and(|set| set.as_ref() == settings) {
            return false;
        }
        let socket = SockRef::from(listener);
        let result = socket.set_tcp_nodelay(true).and_then(|()| match settings {
            Some(k) => socket.set_tcp_keepalive(&probes(k)),
            None => socket.set_keepalive(false),
        });
        match result {
            Ok(()) => self.set = Some(settings.copied()),
            Err(e) => warn!(error = %e, "TCP_NODELAY or keepalive not set on the listening socket"),
        }
        true
    }

    /// For a socket `listener` just accepted, with the settings of the moment: when a reload changed them while the
    /// accept waited, the socket gets them itself (and the listener too, for the next ones).
    pub fn accepted(&mut self, listener: &TcpListener, stream: &TcpStream, settings: Option<&TcpKeepalive>) {
        if self.follow(listener, settings) {
            apply(&SockRef::from(stream), settings);
            if settings.is_none() {
                let _ = SockRef::from(stream).set_keepalive(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What an accepted socket has: (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
    async fn accepted_options(listener: &TcpListener) -> (bool, bool, Duration, Duration, u32) {
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let s = SockRef::from(&accepted);
        (
            s.tcp_nodelay().unwrap(),
            s.keepalive().unwrap(),
            s.tcp_keepalive_time().unwrap(),
            s.tcp_keepalive_interval().unwrap(),
            s.tcp_keepalive_retries().unwrap(),
        )
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options_and_follow_a_change() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut options = ListenerOptions::default();
        let first = TcpKeepalive { idle: Duration::from_secs(120), interval: Duration::from_secs(30), count: 4 };
        options.follow(&listener, Some(&first));
        let (nodelay, keepalive, idle, interval, count) = accepted_options(&listener).await;
        assert!(nodelay && keepalive);
        assert_eq!((idle, interval, count), (first.idle, first.interval, first.count));

        // A reload's new settings reach the next accepted socket.
        let second = TcpKeepalive { idle: Duration::from_secs(7), interval: Duration::from_secs(3), count: 2 };
        options.follow(&listener, Some(&second));
        let (_, keepalive, idle, interval, count) = accepted_options(&listener).await;
        assert!(keepalive);
        assert_eq!((idle, interval, count), (second.idle, second.interval, second.count));

        // Keepalive turned off by a reload: off on the next socket, TCP_NODELAY still on.
        options.follow(&listener, None);
        let (nodelay, keepalive, ..) = accepted_options(&listener).await;
        assert!(nodelay && !keepalive);

        // A reload while an accept waited: the socket accepted with the old settings gets the new ones itself.
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (waited, _) = listener.accept().await.unwrap();
        assert!(!SockRef::from(&waited).keepalive().unwrap(), "accepted with the settings of before");
        options.accepted(&listener, &waited, Some(&second));
        let s = SockRef::from(&waited);
        assert!(s.keepalive().unwrap() && s.tcp_nodelay().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), second.idle);
        let (_, keepalive, idle, ..) = accepted_options(&listener).await;
        assert!(keepalive && idle == second.idle, "and the listener hands them on");
    }
}
