//! The keys only a `coap` listener has: its flow table, datagram limits and DTLS Connection IDs.

use super::Checker;
use crate::config::listener_schema::CoapListenerKeys;
use crate::config::runtime::CoapListenerConfig;
use crate::config::ConfigError;

/// The flow table, datagram and DTLS Connection ID settings, with their defaults.
pub(super) fn coap_settings(
    c: &Checker<'_>,
    key: &str,
    l: &CoapListenerKeys,
) -> Result<CoapListenerConfig, ConfigError> {
    let defaults = CoapListenerConfig::default();
    let flow_idle_timeout = match l.flow_idle_timeout {
        Some(d) => c.duration(format!("{key}.flow_idle_timeout"), d.0)?,
        None => defaults.flow_idle_timeout,
    };
    let max_flows = l.max_flows.unwrap_or(defaults.max_flows);
    c.count(format!("{key}.max_flows"), max_flows)?;
    let max_datagram_size = l.max_datagram_size.map_or(defaults.max_datagram_size, |s| s.0);
    c.size(format!("{key}.max_datagram_size"), max_datagram_size)?;
    let rate = c.count(
        format!("{key}.max_datagram_rate_per_flow"),
        l.max_datagram_rate_per_flow.unwrap_or(defaults.max_datagram_rate_per_flow),
    )?;
    if l.datagram_rate_burst.is_some() && rate == 0 {
        return Err(c.err(format!("{key}.datagram_rate_burst"), "needs max_datagram_rate_per_flow"));
    }
    let burst = l.datagram_rate_burst.unwrap_or(rate);
    if rate > 0 {
        c.count(format!("{key}.datagram_rate_burst"), burst)?;
    }
    let (dtls_cid_timeout, max_dtls_cids) = dtls_cids(c, key, l, &defaults)?;
    let receive_buffer = l.receive_buffer.map(|s| s.0);
    if receive_buffer.is_some_and(|b| !(RECEIVE_BUFFER_MIN..=RECEIVE_BUFFER_MAX).contains(&b)) {
        return Err(c.err(format!("{key}.receive_buffer"), "must be between 1KiB and 1GiB"));
    }
    Ok(CoapListenerConfig {
        flow_idle_timeout,
        max_flows,
        max_flows_per_ip: c.count(format!("{key}.max_flows_per_ip"), l.max_flows_per_ip.unwrap_or(0))?,
        max_datagram_size,
        max_datagram_rate_per_flow: rate,
        datagram_rate_burst: burst,
        dtls_cid_length: l.dtls_cid_length,
        dtls_cid_timeout,
        max_dtls_cids,
        receive_buffer,
    })
}

/// The range of `receive_buffer`: the kernel takes an int and doubles it.
const RECEIVE_BUFFER_MIN: usize = 1024;
const RECEIVE_BUFFER_MAX: usize = 1 << 30;

/// `dtls_cid_length` and the two keys that need it: how long and how many CIDs are remembered.
fn dtls_cids(
    c: &Checker<'_>,
    key: &str,
    l: &CoapListenerKeys,
    defaults: &CoapListenerConfig,
) -> Result<(std::time::Duration, usize), ConfigError> {
    if let Some(length) = l.dtls_cid_length {
        c.count(format!("{key}.dtls_cid_length"), length)?;
    }
    if l.dtls_cid_length.is_none() {
        for (field, is_set) in
            [("dtls_cid_timeout", l.dtls_cid_timeout.is_some()), ("max_dtls_cids", l.max_dtls_cids.is_some())]
        {
            if is_set {
                return Err(c.err(format!("{key}.{field}"), "needs dtls_cid_length"));
            }
        }
    }
    let dtls_cid_timeout = match l.dtls_cid_timeout {
        Some(d) => c.duration(format!("{key}.dtls_cid_timeout"), d.0)?,
        None => defaults.dtls_cid_timeout,
    };
    let max_dtls_cids = l.max_dtls_cids.unwrap_or(defaults.max_dtls_cids);
    c.count(format!("{key}.max_dtls_cids"), max_dtls_cids)?;
    Ok((dtls_cid_timeout, max_dtls_cids))
}
