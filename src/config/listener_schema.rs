//! `listeners[]` in the file: the keys each protocol has. A listener is read once its `protocol` is known (the first
//! reading of the document finds it, [`super::schema::ListenerProtocolOnly`]), with the keys of that protocol only, so
//! a key it cannot have is refused with the keys it can, wherever `protocol` stands in the listener.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::runtime::ListenerProtocol;
use super::schema::FileTls;
use super::units::{DurationValue, SizeValue};

/// A listener as the file has it, by protocol.
#[derive(Debug)]
pub(super) enum FileListener {
    /// `mqtt` and `tcp`: a TCP listener, optionally with TLS.
    Stream(StreamListenerKeys),
    Websocket(WebsocketListenerKeys),
    Coap(CoapListenerKeys),
}

/// The keys of an `mqtt` or `tcp` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamListenerKeys {
    pub(super) name: String,
    pub(super) bind: String,
    pub(super) protocol: ListenerProtocol,
    #[serde(default)]
    pub(super) backend: Option<String>,
    #[serde(default)]
    pub(super) routes: Option<Vec<FileRoute>>,
    #[serde(default)]
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) trusted_proxies: Option<Vec<String>>,
}

/// The keys of a `websocket` listener: those of a TCP listener, and the upgrade's path and origins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebsocketListenerKeys {
    pub(super) name: String,
    pub(super) bind: String,
    pub(super) protocol: ListenerProtocol,
    #[serde(default)]
    pub(super) backend: Option<String>,
    #[serde(default)]
    pub(super) routes: Option<Vec<FileRoute>>,
    #[serde(default)]
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) allowed_origins: Option<Vec<String>>,
}

/// `listeners[].routes[]`: a backend and the conditions a client must meet to go there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoute {
    #[serde(default)]
    pub(super) name: Option<String>,
    pub(super) backend: String,
    #[serde(default)]
    pub(super) sni: Option<String>,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default)]
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) identity: Option<String>,
}

/// The keys of a `coap` listener (UDP): no TLS (DTLS passes through) and no PROXY header, but a flow table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CoapListenerKeys {
    pub(super) name: String,
    pub(super) bind: String,
    pub(super) protocol: ListenerProtocol,
    pub(super) backend: String,
    #[serde(default)]
    pub(super) allowed_sources: Option<Vec<String>>,
    #[serde(default)]
    pub(super) flow_idle_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) max_flows: Option<usize>,
    #[serde(default)]
    pub(super) max_flows_per_ip: Option<usize>,
    #[serde(default)]
    pub(super) max_datagram_size: Option<SizeValue>,
    #[serde(default)]
    pub(super) max_datagram_rate_per_flow: Option<u32>,
    #[serde(default)]
    pub(super) datagram_rate_burst: Option<u32>,
    #[serde(default)]
    pub(super) dtls_cid_length: Option<u8>,
    #[serde(default)]
    pub(super) dtls_cid_timeout: Option<DurationValue>,
    #[serde(default)]
    pub(super) max_dtls_cids: Option<usize>,
    #[serde(default)]
    pub(super) receive_buffer: Option<SizeValue>,
}

/// The keys each protocol's listener has, as the structs above declare them (a test holds them equal).
pub(super) const STREAM_KEYS: &[&str] =
    &["name", "bind", "protocol", "backend", "routes", "tls", "allowed_sources", "trusted_proxies"];
pub(super) const WEBSOCKET_KEYS: &[&str] = &[
    "name",
    "bind",
    "protocol",
    "backend",
    "routes",
    "tls",
    "allowed_sources",
    "trusted_proxies",
    "path",
    "allowed_origins",
];
pub(super) const COAP_KEYS: &[&str] = &[
    "name",
    "bind",
    "protocol",
    "backend",
    "allowed_sources",
    "flow_idle_timeout",
    "max_flows",
    "max_flows_per_ip",
    "max_datagram_size",
    "max_datagram_rate_per_flow",
    "datagram_rate_burst",
    "dtls_cid_length",
    "dtls_cid_timeout",
    "max_dtls_cids",
    "receive_buffer",
];

/// The keys a listener of this protocol has.
pub(super) fn keys_of(protocol: ListenerProtocol) -> &'static [&'static str] {
    match protocol {
        ListenerProtocol::Mqtt | ListenerProtocol::Tcp => STREAM_KEYS,
        ListenerProtocol::Websocket => WEBSOCKET_KEYS,
        ListenerProtocol::Coap => COAP_KEYS,
    }
}

/// The second reading of the document: its `listeners`, each with the keys of the protocol the first reading found
/// for it (in order); every other section is skipped (the first reading took it).
pub(super) struct ListenersByProtocol<'a>(pub(super) &'a [ListenerProtocol]);

impl<'de> DeserializeSeed<'de> for ListenersByProtocol<'_> {
    type Value = Vec<FileListener>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListenersByProtocol<'_> {
    type Value = Vec<FileListener>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration: a mapping with listeners and backends")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut listeners = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "listeners" {
                listeners = map.next_value_seed(Listeners(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(listeners)
    }
}

struct Listeners<'a>(&'a [ListenerProtocol]);

impl<'de> DeserializeSeed<'de> for Listeners<'_> {
    type Value = Vec<FileListener>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Listeners<'_> {
    type Value = Vec<FileListener>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of listeners")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut listeners = Vec::with_capacity(self.0.len());
        for &protocol in self.0 {
            match seq.next_element_seed(Listener(protocol))? {
                Some(l) => listeners.push(l),
                None => return Err(de::Error::invalid_length(listeners.len(), &self)),
            }
        }
        // Both readings are of the same text, so nothing is left; if something were, it is not a listener we know.
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(self.0.len() + 1, &self));
        }
        Ok(listeners)
    }
}

/// One listener, read with the keys of `protocol`.
struct Listener(ListenerProtocol);

impl<'de> DeserializeSeed<'de> for Listener {
    type Value = FileListener;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            ListenerProtocol::Mqtt | ListenerProtocol::Tcp => {
                StreamListenerKeys::deserialize(d).map(FileListener::Stream)
            }
            ListenerProtocol::Websocket => WebsocketListenerKeys::deserialize(d).map(FileListener::Websocket),
            ListenerProtocol::Coap => CoapListenerKeys::deserialize(d).map(FileListener::Coap),
        }
    }
}

impl FileListener {
    pub(super) fn name(&self) -> &str {
        match self {
            FileListener::Stream(k) => &k.name,
            FileListener::Websocket(k) => &k.name,
            FileListener::Coap(k) => &k.name,
        }
    }

    pub(super) fn bind(&self) -> &str {
        match self {
            FileListener::Stream(k) => &k.bind,
            FileListener::Websocket(k) => &k.bind,
            FileListener::Coap(k) => &k.bind,
        }
    }

    pub(super) fn protocol(&self) -> ListenerProtocol {
        match self {
            FileListener::Stream(k) => k.protocol,
            FileListener::Websocket(k) => k.protocol,
            FileListener::Coap(k) => k.protocol,
        }
    }

    /// `backend`: required of `coap` listeners, the default of the others' `routes`.
    pub(super) fn backend(&self) -> Option<&str> {
        match self {
            FileListener::Stream(k) => k.backend.as_deref(),
            FileListener::Websocket(k) => k.backend.as_deref(),
            FileListener::Coap(k) => Some(&k.backend),
        }
    }

    /// `tls`, or None (`coap` listeners have none).
    pub(super) fn tls(&self) -> Option<&FileTls> {
        match self {
            FileListener::Stream(k) => k.tls.as_ref(),
            FileListener::Websocket(k) => k.tls.as_ref(),
            FileListener::Coap(_) => None,
        }
    }

    /// `routes`, or None (`coap` listeners have none).
    pub(super) fn routes(&self) -> Option<&[FileRoute]> {
        match self {
            FileListener::Stream(k) => k.routes.as_deref(),
            FileListener::Websocket(k) => k.routes.as_deref(),
            FileListener::Coap(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key lists messages name are the keys each listener struct accepts.
    #[test]
    fn key_lists_are_the_structs_keys() {
        let expected_by = |result: Result<(), serde_saphyr::Error>| match result {
            Err(serde_saphyr::Error::SerdeUnknownField { expected, .. }) => expected,
            other => panic!("{other:?}"),
        };
        let options = || serde_saphyr::options! { with_snippet: false };
        let stream = serde_saphyr::from_str_with_options::<StreamListenerKeys>("bogus: 1", options()).map(drop);
        assert_eq!(expected_by(stream), STREAM_KEYS);
        let websocket = serde_saphyr::from_str_with_options::<WebsocketListenerKeys>("bogus: 1", options()).map(drop);
        assert_eq!(expected_by(websocket), WEBSOCKET_KEYS);
        let coap = serde_saphyr::from_str_with_options::<CoapListenerKeys>("bogus: 1", options()).map(drop);
        assert_eq!(expected_by(coap), COAP_KEYS);
    }
}
