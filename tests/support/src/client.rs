//! MQTT clients (rumqttc, v3.1.1 and v5) that wait for what they asked for, and "which broker did this client id
//! land on" through the proxy.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5;

use crate::broker::WHOAMI_TOPIC;
use crate::time::STEP_TIMEOUT;

/// The MQTT protocol version a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (rumqttc's default module).
    V4,
    /// MQTT 5 (`rumqttc::v5`).
    V5,
}

/// How a test client reaches the proxy or a broker.
#[derive(Clone)]
pub enum Via {
    /// Plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(Arc<rustls::ClientConfig>),
    /// MQTT over WebSocket over TLS, at `/mqtt` with subprotocol `mqtt`.
    Wss(Arc<rustls::ClientConfig>),
}

impl From<Option<Arc<rustls::ClientConfig>>> for Via {
    fn from(tls: Option<Arc<rustls::ClientConfig>>) -> Via {
        tls.map_or(Via::Tcp, Via::Tls)
    }
}

/// (host, transport) for a client of `addr`: plain TCP clients its address; TLS clients name `localhost` (a SAN of
/// the test certificate); over WebSocket rumqttc takes the whole URL as the host.
fn transport(addr: SocketAddr, via: Via) -> (String, rumqttc::Transport) {
    match via {
        Via::Tcp if !addr.ip().is_unspecified() => (addr.ip().to_string(), rumqttc::Transport::tcp()),
        Via::Tcp => ("127.0.0.1".to_owned(), rumqttc::Transport::tcp()),
        Via::Tls(cfg) => {
            ("localhost".to_owned(), rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(cfg)))
        }
        Via::Wss(cfg) => (
            format!("wss://localhost:{}/mqtt", addr.port()),
            rumqttc::Transport::wss_with_config(rumqttc::TlsConfiguration::Rustls(cfg)),
        ),
    }
}

/// Connects an MQTT 3.1.1 client and waits for a successful CONNACK (errs on refusal, error or timeout).
pub async fn connect_v4(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    connect_v4_via(addr, tls.into(), client_id).await
}

async fn connect_v4_via(
    addr: SocketAddr,
    via: Via,
    client_id: &str,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let (host, transport) = transport(addr, via);
    let mut options = rumqttc::MqttOptions::new(client_id, host, addr.port());
    options.set_transport(transport);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    eventloop.network_options.set_connection_timeout(STEP_TIMEOUT.as_secs());
    let first = tokio::time::timeout(STEP_TIMEOUT, eventloop.poll())
        .await
        .map_err(|_| format!("{client_id}: no CONNACK within {STEP_TIMEOUT:?}"))?;
    match first {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))
            if ack.code == rumqttc::ConnectReturnCode::Success =>
        {
            Ok((client, eventloop))
        }
        Ok(other) => Err(format!("{client_id}: expected CONNACK, got {other:?}")),
        Err(e) => Err(format!("{client_id}: connect failed: {e}")),
    }
}

/// Connects an MQTT 5 client and waits for a successful CONNACK (errs on refusal, error or timeout).
pub async fn connect_v5(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
) -> Result<(v5::AsyncClient, v5::EventLoop), String> {
    connect_v5_via(addr, tls.into(), client_id).await
}

async fn connect_v5_via(
    addr: SocketAddr,
    via: Via,
    client_id: &str,
) -> Result<(v5::AsyncClient, v5::EventLoop), String> {
    let (host, transport) = transport(addr, via);
    let mut options = v5::MqttOptions::new(client_id, host, addr.port());
    options.set_transport(transport);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_connection_timeout(STEP_TIMEOUT.as_secs());
    let (client, mut eventloop) = v5::AsyncClient::new(options, 16);
    let first = tokio::time::timeout(STEP_TIMEOUT, eventloop.poll())
        .await
        .map_err(|_| format!("{client_id}: no CONNACK within {STEP_TIMEOUT:?}"))?;
    match first {
        Ok(v5::Event::Incoming(v5::Incoming::ConnAck(ack)))
            if ack.code == v5::mqttbytes::v5::ConnectReturnCode::Success =>
        {
            Ok((client, eventloop))
        }
        Ok(other) => Err(format!("{client_id}: expected CONNACK, got {other:?}")),
        Err(e) => Err(format!("{client_id}: connect failed: {e}")),
    }
}

/// What the harness needs from an incoming packet, for both versions.
enum Seen {
    SubAck,
    PubAck,
    Publish { topic: String, payload: Vec<u8> },
    Other,
}

/// A connected rumqttc client of either version, with its event loop. Never reconnects: after the first error
/// every call fails (rumqttc would silently reconnect on the next poll).
pub enum Conn {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

pub struct MqttClient {
    pub id: String,
    conn: Conn,
    /// Publishes that arrived while waiting for something else.
    inbox: VecDeque<(String, Vec<u8>)>,
    /// Why the connection ended, once it did.
    closed: Option<String>,
}

impl fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttClient").field("id", &self.id).field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Connects (plain TCP when `tls` is None) and waits for a successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: &str,
        version: Version,
    ) -> Result<MqttClient, String> {
        MqttClient::connect_via(addr, tls.into(), client_id, version).await
    }

    /// [`MqttClient::connect`] over TCP, TLS or WebSocket over TLS.
    pub async fn connect_via(
        addr: SocketAddr,
        via: Via,
        client_id: &str,
        version: Version,
    ) -> Result<MqttClient, String> {
        let conn = match version {
            Version::V4 => connect_v4_via(addr, via, client_id).await.map(|(c, e)| Conn::V4(c, Box::new(e)))?,
            Version::V5 => connect_v5_via(addr, via, client_id).await.map(|(c, e)| Conn::V5(c, Box::new(e)))?,
        };
        Ok(MqttClient { id: client_id.to_owned(), conn, inbox: VecDeque::new(), closed: None })
    }

    /// Why the connection ended, if it did.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// One event from the event loop; Err once the connection has ended.
    async fn poll(&mut self) -> Result<Seen, String> {
        if let Some(why) = &self.closed {
            return Err(format!("{}: connection already ended: {why}", self.id));
        }
        let seen = match &mut self.conn {
            Conn::V4(_, ev) => match ev.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => Ok(match p {
                    rumqttc::Packet::SubAck(_) => Seen::SubAck,
                    rumqttc::Packet::PubAck(_) => Seen::PubAck,
                    rumqttc::Packet::Publish(p) => Seen::Publish { topic: p.topic, payload: p.payload.to_vec() },
                    _ => Seen::Other,
                }),
                Ok(rumqttc::Event::Outgoing(_)) => Ok(Seen::Other),
                Err(e) => Err(e.to_string()),
            },
            Conn::V5(_, ev) => match ev.poll().await {
                Ok(v5::Event::Incoming(p)) => Ok(match p {
                    v5::Incoming::SubAck(_) => Seen::SubAck,
                    v5::Incoming::PubAck(_) => Seen::PubAck,
                    v5::Incoming::Publish(p) => Seen::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                    },
                    _ => Seen::Other,
                }),
                Ok(v5::Event::Outgoing(_)) => Ok(Seen::Other),
                Err(e) => Err(e.to_string()),
            },
        };
        match seen {
            Ok(Seen::Publish { topic, payload }) => {
                self.inbox.push_back((topic, payload));
                Ok(Seen::Other)
            }
            Ok(s) => Ok(s),
            Err(e) => {
                self.closed = Some(e.clone());
                Err(format!("{}: connection ended: {e}", self.id))
            }
        }
    }

    /// Polls until `want` is seen, under `timeout`.
    async fn until(&mut self, timeout: Duration, what: &str, want: fn(&Seen) -> bool) -> Result<(), String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if want(&self.poll().await?) {
                    return Ok(());
                }
            }
        })
        .await
        .map_err(|_| format!("{id}: no {what} within {timeout:?}"))?
    }

    /// Subscribes (QoS 1) and waits for the SUBACK.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let sent = match &self.conn {
            Conn::V4(c, _) => c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
            Conn::V5(c, _) => c.subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
        };
        sent.map_err(|e| format!("{}: subscribe {topic}: {e}", self.id))?;
        self.until(STEP_TIMEOUT, "SUBACK", |s| matches!(s, Seen::SubAck)).await
    }

    /// Publishes (QoS 1) and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> Result<(), String> {
        let sent = match &self.conn {
            Conn::V4(c, _) => {
                c.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec()).await.map_err(|e| e.to_string())
            }
            Conn::V5(c, _) => c
                .publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload.to_vec())
                .await
                .map_err(|e| e.to_string()),
        };
        sent.map_err(|e| format!("{}: publish {topic}: {e}", self.id))?;
        self.until(STEP_TIMEOUT, "PUBACK", |s| matches!(s, Seen::PubAck)).await
    }

    /// The payload of the next PUBLISH on `topic` (earlier ones that arrived meanwhile first).
    pub async fn next_publish(&mut self, topic: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(i) = self.inbox.iter().position(|(t, _)| t == topic) {
                    let (_, payload) = self.inbox.remove(i).unwrap_or_default();
                    return Ok(payload);
                }
                self.poll().await?;
            }
        })
        .await
        .map_err(|_| format!("{id}: no PUBLISH on {topic} within {timeout:?}"))?
    }

    /// Subscribes to `topic`, publishes `payload` on it and waits for it to come back: one round trip.
    pub async fn round_trip(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        self.subscribe(topic).await?;
        self.publish(topic, payload, false).await?;
        let got = self.next_publish(topic, STEP_TIMEOUT).await?;
        if got != payload {
            return Err(format!("{}: sent {payload:?} on {topic}, got {got:?}", self.id));
        }
        Ok(())
    }

    /// Polls until the connection ends; returns why, or Err if it is still open after `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<String, String> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, async { while self.poll().await.is_ok() {} })
            .await
            .map_err(|_| format!("{id}: connection still open after {timeout:?}"))?;
        Ok(self.closed.clone().unwrap_or_default())
    }

    /// Sends DISCONNECT and waits (2 s at most) for the server to close the connection.
    pub async fn disconnect(mut self) {
        if self.closed.is_some() {
            return;
        }
        let sent = match &self.conn {
            Conn::V4(c, _) => c.disconnect().await.is_ok(),
            Conn::V5(c, _) => c.disconnect().await.is_ok(),
        };
        if sent {
            let _ = self.wait_closed(Duration::from_secs(2)).await;
        }
    }
}

/// Where a client with `client_id` lands through `proxy`: connects, subscribes to `lb/whoami`, returns the retained
/// payload (the broker's name), disconnects.
pub async fn try_which_broker(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
    version: Version,
) -> Result<String, String> {
    let mut c = MqttClient::connect(proxy, tls, client_id, version).await?;
    c.subscribe(WHOAMI_TOPIC).await?;
    let name = c.next_publish(WHOAMI_TOPIC, STEP_TIMEOUT).await?;
    c.disconnect().await;
    String::from_utf8(name).map_err(|e| format!("{client_id}: whoami payload is not UTF-8: {e}"))
}

/// [`try_which_broker`], panicking with the reason on failure.
pub async fn which_broker(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: &str,
    version: Version,
) -> String {
    try_which_broker(proxy, tls, client_id, version).await.unwrap_or_else(|e| panic!("which_broker: {e}"))
}

/// [`which_broker`] for many ids, 8 at a time; results in the order of `ids`.
pub async fn which_brokers(
    proxy: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    ids: &[String],
    version: Version,
) -> Vec<String> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(8) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in chunk.iter().enumerate() {
            let (tls, id) = (tls.clone(), id.clone());
            tasks.spawn(async move { (i, try_which_broker(proxy, tls, &id, version).await) });
        }
        let mut got: Vec<(usize, Result<String, String>)> = Vec::with_capacity(chunk.len());
        while let Some(r) = tasks.join_next().await {
            got.push(r.expect("which_broker task panicked"));
        }
        got.sort_by_key(|(i, _)| *i);
        out.extend(got.into_iter().map(|(_, r)| r.unwrap_or_else(|e| panic!("which_broker: {e}"))));
    }
    out
}
