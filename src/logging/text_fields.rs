//! The text lines' fields: exactly what tracing-subscriber's `DefaultFields` writes, with the common cases written
//! directly. Every relayed connection writes a `connection closed` line of about ten fields; the library's visitor
//! formats each value through `{:?}` (escaping a string character by character) and the message through a
//! character-by-character ANSI-escape filter, which was a few percent of the proxy's CPU per connection.
//!
//! The fast paths cover values whose text needs no escaping: a string of printable ASCII without `"` or `\` is
//! its Debug text between quotes, a message of ASCII without terminal control characters is itself, integers and
//! booleans are their digits and words. Everything else (another string, an error, ANSI colours, the `log`
//! bridge's fields) goes to the library's own visitor, so its text stays the library's.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Name of the field tracing's macros give an event's message.
const MESSAGE: &str = "message";

/// The text lines' field formatter (events and spans).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor { writer, is_empty: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Bytes of message buffer a thread keeps between lines.
const MESSAGE_TEXT_KEPT: usize = 4096;

thread_local! {
    /// A message's text, checked for characters the library would escape before it is written.
    static MESSAGE_TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes `name=value` pairs separated by spaces, as `DefaultVisitor` does.
struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    /// No field written yet: the next one needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

impl TextVisitor<'_> {
    /// The name to write before `=` when this visitor writes the field itself: None for the message (written
    /// without a name), for the `log` bridge's fields (left out) and when the line is coloured; those go through
    /// [`Self::record_debug`].
    fn plain_name(&self, field: &Field) -> Option<&'static str> {
        let name = field.name();
        if self.result.is_err() || self.writer.has_ansi_escapes() || name == MESSAGE || name.starts_with("log.") {
            return None;
        }
        Some(name.strip_prefix("r#").unwrap_or(name))
    }

    /// Writes the separating space (unless first), the name and `equals` (`=`, or `="` before a quoted string:
    /// every write is a call through two writers).
    fn start(&mut self, name: &str, equals: &str) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(name)?;
        self.writer.write_str(equals)
    }

    /// Hands one field to the library's visitor, which continues where this one is.
    fn library(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // The library writes every field but the `log` bridge's.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    /// Writes the message when its text needs none of the library's escapes; false if it was not written.
    fn message(&mut self, value: &dyn fmt::Debug) -> bool {
        if self.writer.has_ansi_escapes() {
            return false;
        }
        let sanitizes = self.writer.sanitizes_ansi_escapes();
        let written = MESSAGE_TEXT.try_with(|text| {
            // Busy if formatting the message logged another line on this thread.
            let Ok(mut text) = text.try_borrow_mut() else { return false };
            text.clear();
            if write!(text, "{value:?}").is_err() || (sanitizes && !is_inert_message(&text)) {
                return false;
            }
            if !self.is_empty {
                self.result = self.writer.write_char(' ');
            }
            self.is_empty = false;
            if self.result.is_ok() {
                self.result = self.writer.write_str(&text);
            }
            // One long message must not hold its size for the thread's life.
            if text.capacity() > MESSAGE_TEXT_KEPT {
                *text = String::new();
            }
            true
        });
        // Gone if the thread is exiting.
        written.unwrap_or(false)
    }
}

/// Whether the library writes this message text unchanged: ASCII without the control characters it escapes
/// (ESC, BEL, BS, FF, DEL; the C1 controls are not ASCII).
fn is_inert_message(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii() && !matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f))
}

/// Whether a string's Debug text is the string between quotes: printable ASCII without `"` and `\`.
fn is_plain_str(value: &str) -> bool {
    value.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.plain_name(field) {
            Some(name) if is_plain_str(value) => {
                self.result = self.start(name, "=\"").and_then(|()| {
                    self.writer.write_str(value)?;
                    self.writer.write_char('"')
                });
            }
            // The library writes a message string through Display.
            None if field.name() == MESSAGE => self.record_debug(field, &format_args!("{value}")),
            _ => self.library(field, |v| v.record_str(field, value)),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match self.plain_name(field) {
            Some(name) => {
                self.result =
                    self.start(name, "=").and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)))
            }
            None => self.record_debug(field, &value),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match self.plain_name(field) {
            Some(name) => {
                self.result =
                    self.start(name, "=").and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)))
            }
            None => self.record_debug(field, &value),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match self.plain_name(field) {
            Some(name) => {
                self.result =
                    self.start(name, "=").and_then(|()| self.writer.write_str(if value { "true" } else { "false" }))
            }
            None => self.record_debug(field, &value),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match self.plain_name(field) {
            // Debug, as the library writes it (1e-7, not 0.0000001).
            Some(name) => self.result = self.start(name, "=").and_then(|()| write!(self.writer, "{value:?}")),
            None => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.library(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if let Some(name) = self.plain_name(field) {
            self.result = self.start(name, "=").and_then(|()| write!(self.writer, "{value:?}"));
        } else if field.name() != MESSAGE || !self.message(value) {
            self.library(field, |v| v.record_debug(field, value));
        }
    }
}
