//! Process logging: the level filter and the two line formats (text, JSON).
//!
//! The level comes from `RUST_LOG` (default `info`). Libraries are quieter than that: rustls, hyper and tungstenite
//! log only errors unless `RUST_LOG` names them (`RUST_LOG=info,rustls=debug`). Their warnings describe single
//! clients (rustls warns about every client that sends an IP address as SNI), which an operator reads in the
//! metrics (`mqttlb_tls_handshake_failures_total`), not as one line per client.
//!
//! JSON lines are `{"timestamp","level","fields":{..},"target"}`, with `"span":{"name",..}` inside a connection. Events a library writes through the `log` crate
//! carry the path of its source file on the build machine (`log.file`); those bridge fields are left out, the
//! library's module is the `target`.
//!
//! Text lines are tracing-subscriber's default format, byte for byte, written by cheaper parts: the line by
//! [`text_line`], its fields by [`text_fields`], its timestamp by [`timestamp`].

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub mod text_fields;
pub mod text_line;
#[cfg(test)]
mod text_tests;
pub mod timestamp;

/// Characters of a client-supplied string (client id, user name, server name) a log line carries at most.
pub const CLIPPED_CHARS: usize = 128;

/// A string a client sent, as a log line may carry it: at most [`CLIPPED_CHARS`] characters, then a marker saying
/// how many bytes were left out. A client must not be able to write as much log as it sends (a 60,000-character
/// client id on every connection would otherwise be 60 KB of log per connection).
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(CLIPPED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => {
            let kept = text.get(..end).unwrap_or_default();
            std::borrow::Cow::Owned(format!("{kept}...[{} more bytes]", text.len() - end))
        }
    }
}

/// Libraries held at `error` unless `RUST_LOG` names them.
const QUIET_LIBRARIES: &str = "rustls=error,hyper=error,hyper_util=error,tungstenite=error,tokio_tungstenite=error";

/// Level when `RUST_LOG` is not set.
const DEFAULT_LEVEL: &str = "info";

/// Prefix of the fields the `log` crate bridge adds to an event (`log.target`, `log.file`, ...).
const LOG_BRIDGE_PREFIX: &str = "log.";

/// The filter for `rust_log` (the value of `RUST_LOG`, if set): the library defaults first, so that a directive of
/// the user's naming a library replaces its default.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let user = rust_log.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_LEVEL);
    EnvFilter::builder().parse_lossy(format!("{QUIET_LIBRARIES},{user}"))
}

/// Installs the process's subscriber: `json` or text lines on stderr, filtered by `RUST_LOG`.
pub fn init(json: bool) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        // Span fields kept as JSON, so each line can carry its connection's span as an object.
        builder.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new()).event_format(JsonLines).init();
    } else {
        builder.fmt_fields(text_fields::TextFields).event_format(text_line::TextLines::default()).init();
    }
}

/// One JSON object per event, without the `log` bridge's source locations.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let target = fields.log_target.unwrap_or_else(|| meta.target().to_owned());
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().as_str().to_owned()));
        line.insert("fields".into(), Value::Object(fields.values));
        line.insert("target".into(), Value::String(target));
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), span_object(span.name(), span.extensions().get::<FormattedFields<N>>()));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The current span as `{"name", ..its fields}`; its fields were recorded as a JSON object (see [`init`]).
fn span_object<N>(name: &str, recorded: Option<&FormattedFields<N>>) -> Value {
    let mut object = match recorded.map(|f| serde_json::from_str::<Value>(f.fields.as_str())) {
        Some(Ok(Value::Object(fields))) => fields,
        _ => Map::new(),
    };
    object.insert("name".into(), Value::String(name.to_owned()));
    Value::Object(object)
}

/// Collects an event's fields as JSON values; keeps the `log` bridge's target, drops its other fields.
#[derive(Default)]
struct JsonFields {
    values: Map<String, Value>,
    /// The module of a library event that came through the `log` crate.
    log_target: Option<String>,
}

impl JsonFields {
    fn insert(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if let Some(bridge_field) = name.strip_prefix(LOG_BRIDGE_PREFIX) {
            if let ("target", Value::String(target)) = (bridge_field, value) {
                self.log_target = Some(target);
            }
            return;
        }
        self.values.insert(name.strip_prefix("r#").unwrap_or(name).to_owned(), value);
    }
}

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn client_strings_are_clipped_with_a_marker() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(60_000);
        let clipped = clip(&long);
        assert!(clipped.starts_with(&"é".repeat(CLIPPED_CHARS)), "cut at a character boundary");
        assert!(clipped.ends_with(&format!("...[{} more bytes]", 2 * (60_000 - CLIPPED_CHARS))), "{clipped}");
        assert!(clipped.len() < 300);
    }

    use super::*;
    use std::sync::{Arc, Mutex};

    /// Lines written by a JSON subscriber while `f` runs, parsed.
    fn json_lines(rust_log: Option<&str>, f: impl FnOnce()) -> Vec<Value> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(rust_log))
            .with_writer(move || Sink(Arc::clone(&sink)))
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// A writer into a buffer the test reads afterwards.
    pub(super) struct Sink(pub(super) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_line_shape() {
        let lines = json_lines(None, || {
            tracing::info!(listener = "mqtts", port = 8883u64, tls = true, share = 0.5, "listening");
        });
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["fields"]["message"], "listening");
        assert_eq!(line["fields"]["listener"], "mqtts");
        assert_eq!(line["fields"]["port"], 8883);
        assert_eq!(line["fields"]["tls"], true);
        assert_eq!(line["fields"]["share"], 0.5);
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    }

    #[test]
    fn log_bridge_fields_give_the_target_and_no_source_path() {
        // What the `log` bridge records for a library's `log::warn!`.
        let lines = json_lines(Some("warn"), || {
            tracing::warn!(
                log.target = "some_library::module",
                log.module_path = "some_library::module",
                log.file = "/home/builder/.cargo/registry/src/some_library/src/module.rs",
                log.line = 42u64,
                "a library warning"
            );
        });
        let [line] = lines.as_slice() else { panic!("one line: {lines:?}") };
        assert_eq!(line["target"], "some_library::module");
        assert_eq!(line["fields"], serde_json::json!({ "message": "a library warning" }));
        assert!(!line.to_string().contains(".rs"), "{line}");
    }

    #[test]
    fn libraries_are_quiet_unless_named() {
        // The messages that get through at `rust_log`.
        let through = |rust_log: Option<&str>| -> Vec<String> {
            let lines = json_lines(rust_log, || {
                tracing::warn!(target: "rustls::msgs::handshake", "rustls warn");
                tracing::debug!(target: "rustls::msgs::handshake", "rustls debug");
                tracing::warn!(target: "tungstenite::protocol", "tungstenite warn");
                tracing::info!(target: "mqtt_lb::session", "ours info");
                tracing::debug!(target: "mqtt_lb::session", "ours debug");
            });
            lines.iter().filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned)).collect()
        };
        assert_eq!(through(None), ["ours info"]);
        assert_eq!(through(Some("info")), ["ours info"], "a bare level is ours");
        assert_eq!(through(Some("debug")), ["ours info", "ours debug"]);
        assert_eq!(through(Some("info,rustls=debug")), ["rustls warn", "rustls debug", "ours info"]);
        assert_eq!(through(Some("mqtt_lb=warn")), Vec::<String>::new());
    }
}
