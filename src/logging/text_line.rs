//! The text line around the fields: tracing-subscriber's default (`Full`) layout, `<timestamp> <LEVEL> <spans>
//! <target>: <fields>`, written with plain string writes when the line is not coloured. The library's formatter
//! writes the level, the target and each separator through ANSI style wrappers even when colours are off, a
//! formatting call each; on a line per connection that was a tenth of the line's cost.
//!
//! Coloured lines (stderr is a terminal) go to the library's formatter unchanged.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::timestamp::CachedSystemTime;

/// The text lines' event formatter, with the timer `T`.
#[derive(Debug, Clone)]
pub struct TextLines<T = CachedSystemTime> {
    timer: T,
    /// The library's formatter with the same timer, for coloured lines.
    coloured: Format<Full, T>,
}

impl Default for TextLines {
    fn default() -> Self {
        TextLines::with_timer(CachedSystemTime)
    }
}

impl<T: FormatTime + Clone> TextLines<T> {
    pub fn with_timer(timer: T) -> Self {
        TextLines { coloured: Format::default().with_timer(timer.clone()), timer }
    }
}

/// The level as the library writes it uncoloured (right-aligned in five characters), with the spaces after the
/// timestamp and after the level: one write instead of three.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

impl<S, N, T> FormatEvent<S, N> for TextLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return self.coloured.format_event(ctx, writer, event);
        }
        // A library's event through the `log` bridge: its level and target are the library's, not the bridge's.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // As the library: a clock that cannot be read is a line without a time, not a lost line.
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level_text(meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            let mut any = false;
            for span in scope.from_root() {
                any = true;
                writer.write_str(span.metadata().name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                    writer.write_char('{')?;
                    writer.write_str(&fields.fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if any {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}
