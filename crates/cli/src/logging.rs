//! How `writ serve` logs: one line per event on stderr, JSON in
//! production and compact text with `--dev`, filtered by `WRIT_LOG`.
//!
//! In JSON, every request runs inside a `request` span (method, path,
//! request id; `writ_server::app::edge`), and each event prints the fields
//! of the spans it happened in. tracing-subscriber formats a span's fields
//! when the span is created, whether or not an event ever prints them, so
//! that cost is paid by every request, including every exchange that logs
//! nothing. [`SpanFieldsJson`] writes the object that the crate's own
//! `JsonFields` would, straight into one buffer, instead of building a map
//! of `serde_json::Value`s first (docs/PERFORMANCE.md, session 13).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber; `WRIT_LOG` (an `EnvFilter` directive)
/// overrides the default `info,sqlx=warn`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).fmt_fields(SpanFieldsJson).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

/// A span's fields as one JSON object, the shape the JSON event formatter
/// reads back (`{"method":"POST","path":"/v1/exchange",…}`): strings and
/// anything recorded with `%` or `?` as JSON strings; 64-bit integers,
/// booleans and finite floats as JSON numbers and booleans; 128-bit
/// integers as strings (through `record_debug`, as the crate's formatter
/// writes them). Two differences from the crate's formatter, neither of
/// which an event's parsed line shows: names come in the order they were
/// recorded (the crate sorts them; a JSON object has no order), and a
/// float JSON cannot hold (NaN, infinity) is written as a string where the
/// crate writes `null`.
pub struct SpanFieldsJson;

impl<'writer> FormatFields<'writer> for SpanFieldsJson {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut object = JsonObject::default();
        fields.record(&mut object);
        object.finish()?;
        writer.write_str(&object.text)
    }

    /// Fields recorded after the span was created (`span.record(..)`) go
    /// into the same object: its closing brace is replaced by the new
    /// members and a new brace. A name recorded twice appears twice; the
    /// event formatter keeps the last, as JSON parsers do.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut object = JsonObject::default();
        fields.record(&mut object);
        object.finish()?;
        if object.text == "{}" {
            return Ok(());
        }
        match current.fields.strip_suffix('}') {
            Some(open) if open != "{" => {
                let members = &object.text[1..];
                current.fields.truncate(open.len());
                current.fields.push(',');
                current.fields.push_str(members);
            }
            _ => current.fields = object.text,
        }
        Ok(())
    }
}

/// Builds one JSON object from recorded fields.
#[derive(Default)]
struct JsonObject {
    text: String,
    /// Whether writing a value failed (a `Debug` or `Display` that
    /// returned an error), reported by [`Self::finish`]: `Visit` methods
    /// cannot return one.
    failed: bool,
}

impl JsonObject {
    /// Starts the next member: `{"name":` or `,"name":`.
    fn key(&mut self, field: &Field) {
        if self.text.is_empty() {
            // Three short fields, as the request span has, fit.
            self.text.reserve(128);
            self.text.push('{');
        } else {
            self.text.push(',');
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.string(format_args!("{name}"));
        self.text.push(':');
    }

    /// Writes `value` as a JSON string, escaping as it goes.
    fn string(&mut self, value: fmt::Arguments<'_>) {
        self.text.push('"');
        self.failed |= JsonEscape(&mut self.text).write_fmt(value).is_err();
        self.text.push('"');
    }

    fn finish(&mut self) -> fmt::Result {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        if self.failed { Err(fmt::Error) } else { Ok(()) }
    }
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.string(format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.string(format_args!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.text, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.text, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.text.push_str(if value { "true" } else { "false" });
    }

    /// JSON has no NaN or infinity; those are written as strings.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.text, "{value}");
        } else {
            self.string(format_args!("{value}"));
        }
    }
}

/// Appends what is written to it as the inside of a JSON string: `"`,
/// `\` and control characters escaped (RFC 8259 §7), everything else as is.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in s.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Every byte escaped here is ASCII, so `at` and `at + 1` are
            // character boundaries and these slices cannot panic.
            self.0.push_str(&s[plain..at]);
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.push_str(escaped);
            }
            plain = at + 1;
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().expect("not poisoned").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
                .collect()
        }
    }

    /// Logs the same spans and events through the crate's own field
    /// formatter and through [`SpanFieldsJson`]; returns both outputs.
    fn both(log: impl Fn()) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let theirs = Captured::default();
        let ours = Captured::default();
        let writer = theirs.clone();
        let subscriber =
            tracing_subscriber::fmt().json().flatten_event(true).without_time().with_writer(move || writer.clone());
        tracing::subscriber::with_default(subscriber.finish(), &log);
        let writer = ours.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .without_time()
            .fmt_fields(SpanFieldsJson)
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(subscriber.finish(), &log);
        (theirs.lines(), ours.lines())
    }

    #[test]
    fn events_show_the_same_span_fields_as_with_the_crates_formatter() {
        let hostile = "a \"quoted\" \\ path\nwith\ttabs, \u{1} a control, \u{7f} and ünïcødé";
        let (theirs, ours) = both(|| {
            let method = "POST";
            let span = tracing::info_span!(
                "request",
                method = %method,
                path = %hostile,
                request_id = "3f1c",
                r#type = ?Some(7),
                attempt = 3_u64,
                delta = -2_i64,
                wide = 170_141_183_460_469_231_731_687_303_715_884_105_727_i128,
                retried = true,
                ratio = 0.25,
                later = tracing::field::Empty,
            );
            let _entered = span.enter();
            tracing::info!(status = 500, "request failed");
            span.record("later", "recorded after creation");
            tracing::warn!("after a record");
        });
        assert_eq!(ours.len(), 2, "{ours:?}");
        assert_eq!(ours, theirs);
        let span = &ours[0]["span"];
        assert_eq!(span["path"], hostile);
        assert_eq!(span["type"], "Some(7)");
        assert_eq!(span["attempt"], 3);
        assert_eq!(ours[1]["span"]["later"], "recorded after creation");
        assert_eq!(ours[1]["spans"][0]["name"], "request");
    }

    /// The crate's formatter writes `null` for a float JSON cannot hold;
    /// this one keeps what the value was.
    #[test]
    fn a_float_json_cannot_hold_is_written_as_a_string() {
        let (_, ours) = both(|| {
            let span = tracing::info_span!("floats", nan = f64::NAN, inf = f64::INFINITY, tiny = 1e-300);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let span = &ours[0]["span"];
        assert_eq!(span["nan"], "NaN");
        assert_eq!(span["inf"], "inf");
        assert_eq!(span["tiny"], 1e-300);
    }

    #[test]
    fn nested_spans_and_spans_without_fields_are_listed_as_before() {
        let (theirs, ours) = both(|| {
            let outer = tracing::info_span!("outer");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", n = 1);
            let _inner = inner.enter();
            tracing::error!(detail = "x", "nested");
        });
        assert_eq!(ours.len(), 1);
        assert_eq!(ours, theirs);
        assert_eq!(ours[0]["spans"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_record_into_a_span_without_fields_starts_its_object() {
        let (theirs, ours) = both(|| {
            let span = tracing::info_span!("late", value = tracing::field::Empty);
            span.record("value", 5);
            let _entered = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(ours, theirs);
        assert_eq!(ours[0]["span"]["value"], 5);
    }
}
