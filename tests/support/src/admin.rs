//! The admin endpoint over HTTP/1.1, and reading one series out of its `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::time::STEP_TIMEOUT;

/// GET over a plain TCP connection (HTTP/1.1, `Connection: close`): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

pub async fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(body) } else { body.to_owned() };
        Ok((status, body))
    })
    .await
    .map_err(|_| format!("no complete answer within {STEP_TIMEOUT:?}"))?
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A series: metric name and label set.
fn parse_series(text: &str) -> Option<(String, BTreeMap<String, String>)> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('{') else {
        return Some((text.to_owned(), BTreeMap::new()));
    };
    let labels_text = rest.strip_suffix('}')?;
    let mut labels = BTreeMap::new();
    let mut chars = labels_text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
    Some((name.trim().to_owned(), labels))
}

/// The value of one series in an exposition text (None if absent). `series` is `name{label="value",...}`; labels
/// are compared as a set (order-independent, exact).
pub fn metric_in(exposition: &str, series: &str) -> Option<f64> {
    let want = parse_series(series).unwrap_or_else(|| panic!("not a series: {series}"));
    exposition.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|line| {
        // `name{labels} value [timestamp]`: the labels may contain spaces, so split after the closing brace.
        let split_at = line.rfind('}').map_or_else(|| line.find(' ').unwrap_or(line.len()), |i| i + 1);
        let (series_text, rest) = line.split_at(split_at);
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        (parse_series(series_text)? == want).then_some(value)
    })
}

/// Reads `/metrics` of `admin` and returns the value of `series` (0.0 when the series is absent).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    metric_in(&body, series).unwrap_or(0.0)
}
