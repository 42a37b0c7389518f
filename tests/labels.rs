//! The `reason` labels that operators read about (README, docs, Grafana dashboards, alert rules and their promtool
//! tests, the Helm chart, deploy files) are labels mqtt-lb can count: for `mqttlb_connections_rejected_total` the
//! set [`Reject::labels`] enumerates, for the other counters with a `reason` their own enumerations. The list in
//! docs/how-it-works.md of refusal reasons and docs/coap.md's lists of UDP reasons are those sets exactly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mqtt_lb::metrics::udp::{drop_reason, eviction_reason};
use mqtt_lb::mqtt::RejectReason;
use mqtt_lb::reject::Reject;
use mqtt_lb::session::end::CloseReason;
use mqtt_lb::transport::ws::Violation;

const METRIC: &str = "mqttlb_connections_rejected_total";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose names end in one of `extensions`.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path, extensions));
        } else if extensions.iter().any(|e| path.to_string_lossy().ends_with(e)) {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn is_label(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Every counter with a `reason` label, and the reasons it can have.
fn reason_sets() -> Vec<(&'static str, BTreeSet<&'static str>)> {
    vec![
        (METRIC, Reject::labels()),
        ("mqttlb_connect_validation_failures_total", RejectReason::ALL.map(RejectReason::label).into()),
        ("mqttlb_websocket_frame_errors_total", Violation::ALL.map(Violation::label).into()),
        ("mqttlb_connections_closed_total", CloseReason::ALL.map(CloseReason::label).into()),
        ("mqttlb_udp_dropped_datagrams_total", drop_reason::ALL.into()),
        ("mqttlb_udp_flow_evictions_total", eviction_reason::ALL.into()),
    ]
}

/// The reasons that selectors of counter `metric` name: `reason="x"`, `reason!="x"`, `reason=~"a|b"` (JSON's
/// escaped quotes too). Regular-expression alternatives that are not plain labels are left out.
fn selector_reasons(text: &str, metric: &str) -> Vec<String> {
    let text = text.replace("\\\"", "\"");
    let mut found = Vec::new();
    let opening = format!("{metric}{{");
    for (at, _) in text.match_indices(&opening) {
        let rest = &text[at + opening.len()..];
        let selector = &rest[..rest.find('}').unwrap_or(rest.len())];
        for matcher in selector.split(',').map(str::trim).filter(|m| m.starts_with("reason")) {
            let value = matcher.split_once('"').map_or("", |(_, v)| v.trim_end_matches('"'));
            found.extend(value.split('|').filter(|v| is_label(v)).map(str::to_owned));
        }
    }
    found
}

/// The snake_case words of prose that lists reasons: "mqttlb_connections_rejected_total by reason: a, b, ...".
fn prose_reasons(text: &str, metric: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lead = format!("{metric} by reason:");
    for (at, _) in text.match_indices(&lead) {
        let rest = &text[at + lead.len()..];
        let sentence = &rest[..rest.find('.').unwrap_or(rest.len())];
        let words = sentence.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        found.extend(words.filter(|w| w.contains('_') && is_label(w)).map(str::to_owned));
    }
    found
}

/// The backticked words of the paragraph of docs/how-it-works.md that lists the reasons of the rejected counter.
fn documented_reasons() -> BTreeSet<String> {
    let doc = read(&root().join("docs/how-it-works.md"));
    let start =
        doc.find(&format!("Every refusal is counted in `{METRIC}")).expect("docs/how-it-works.md lists the reasons");
    let paragraph = &doc[start..];
    let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
    paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| is_label(w) && !w.starts_with("mqttlb_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_docs_list_every_reason_and_no_other() {
    let known: BTreeSet<String> = Reject::labels().into_iter().map(str::to_owned).collect();
    let listed = documented_reasons();
    let unknown: Vec<_> = listed.difference(&known).collect();
    let missing: Vec<_> = known.difference(&listed).collect();
    assert!(unknown.is_empty(), "docs/how-it-works.md names reasons that do not exist: {unknown:?}");
    assert!(missing.is_empty(), "docs/how-it-works.md does not list these reasons: {missing:?}");
}

/// The backticked words of the table row of `metric` in docs/coap.md.
fn coap_doc_reasons(metric: &str) -> BTreeSet<String> {
    let doc = read(&root().join("docs/coap.md"));
    let row = doc.lines().find(|l| l.starts_with(&format!("| `{metric}`"))).expect("a row for the metric");
    row.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| is_label(w) && *w != "reason" && *w != metric)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_coap_doc_lists_every_udp_reason_and_no_other() {
    for (metric, known) in reason_sets().into_iter().filter(|(m, _)| m.starts_with("mqttlb_udp_")) {
        let known: BTreeSet<String> = known.into_iter().map(str::to_owned).collect();
        assert_eq!(coap_doc_reasons(metric), known, "docs/coap.md, {metric}");
    }
}

#[test]
fn docs_dashboards_and_alerts_name_only_existing_reasons() {
    let root = root();
    let mut checked = Vec::new();
    let mut sources = vec![root.join("README.md")];
    sources.extend(files(&root.join("docs"), &[".md"]));
    sources.extend(files(&root.join("dashboards"), &[".json", ".yaml", ".yml"]));
    sources.extend(files(&root.join("charts"), &[".yaml", ".yml", ".json", ".tpl"]));
    sources.extend(files(&root.join("deploy"), &[".yaml", ".yml", ".json", ".md"]));
    for path in &sources {
        let text = read(path);
        for (metric, known) in reason_sets() {
            for reason in selector_reasons(&text, metric).into_iter().chain(prose_reasons(&text, metric)) {
                let shown = path.display();
                assert!(known.contains(reason.as_str()), "{shown} names {metric} reason {reason:?}, never counted");
                checked.push(reason);
            }
        }
    }
    // The alert rules' description and their promtool tests name reasons: the scan must have found them.
    for expected in ["tls_handshake", "bad_client_id", "ws_bad_path", "no_server_available", "full", "idle"] {
        assert!(checked.iter().any(|r| r == expected), "{expected} not found in {checked:?}");
    }
}

#[test]
fn the_scanners_find_reasons_in_every_form_they_are_written() {
    let json =
        r#""expr": "rate(mqttlb_connections_rejected_total{listener=\"a\", reason=~\"tls_handshake|ws_.*\"}[5m])""#;
    assert_eq!(selector_reasons(json, METRIC), ["tls_handshake"]);
    let yaml = r#"mqttlb_connections_rejected_total{job="x",reason="no_such_reason"}"#;
    assert_eq!(selector_reasons(yaml, METRIC), ["no_such_reason"]);
    let prose = "Look at mqttlb_connections_rejected_total by reason: tls_handshake (certs), limits, connect_timeout.";
    assert_eq!(prose_reasons(prose, METRIC), ["tls_handshake", "connect_timeout"]);
}
