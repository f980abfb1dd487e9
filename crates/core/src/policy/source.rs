//! Reads a policy document (TOML or JSON) into one small tree whose every
//! key and value carries its byte span, so both formats share the typed
//! parser and every diagnostic can point at a line and column.

use std::fmt::Write as _;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use toml::de::{DeTable, DeValue};

use super::{Diagnostic, Pos, Severity};

/// One value of the document with the byte range it was written at.
#[derive(Debug)]
pub(super) struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

/// The value kinds a policy can contain. Kinds the language never accepts
/// (dates, JSON `null`) are kept only by name, for the type error.
#[derive(Debug)]
pub(super) enum Value {
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Unsupported(&'static str),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` pair of a table, in document order.
#[derive(Debug)]
pub(super) struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: Node,
}

impl Value {
    /// The value's type as a user would name it, for "expected …, found …".
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float => "a float",
            Value::Bool(_) => "a boolean",
            Value::Unsupported(name) => name,
            Value::Array(_) => "a list",
            Value::Table(_) => "a table",
        }
    }
}

/// Turns byte offsets into 1-based line and column (columns count
/// characters, not bytes, so they match what an editor shows).
pub(super) struct LineIndex<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { source, line_starts }
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self.source.get(start..offset).map_or(offset - start, |s| s.chars().count()) + 1;
        Pos { line, column }
    }
}

/// Reads a TOML document; syntax errors come back all at once, with
/// positions.
pub(super) fn read_toml(source: &str, index: &LineIndex<'_>) -> Result<Node, Vec<Diagnostic>> {
    let (table, errors) = DeTable::parse_recoverable(source);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| {
                let pos = index.pos(e.span().map_or(0, |s| s.start));
                syntax_error(pos, e.message().trim_end())
            })
            .collect());
    }
    let span = table.span();
    Ok(Node { span, value: toml_table(table.into_inner()) })
}

fn toml_table(table: DeTable<'_>) -> Value {
    let mut entries: Vec<Entry> = table
        .into_iter()
        .map(|(key, value)| {
            let key_span = key.span();
            Entry { key: key.into_inner().into_owned(), key_span, value: toml_node(value) }
        })
        .collect();
    // toml keeps table keys sorted by name; diagnostics and explanations
    // read better in the order the author wrote them.
    entries.sort_by_key(|e| e.key_span.start);
    Value::Table(entries)
}

fn toml_node(value: serde_spanned::Spanned<DeValue<'_>>) -> Node {
    let span = value.span();
    let value = match value.into_inner() {
        DeValue::String(s) => Value::Str(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Unsupported("an integer out of range"),
        },
        DeValue::Float(_) => Value::Float,
        DeValue::Boolean(b) => Value::Bool(b),
        DeValue::Datetime(_) => Value::Unsupported("a date-time"),
        DeValue::Array(items) => Value::Array(items.into_iter().map(toml_node).collect()),
        DeValue::Table(table) => toml_table(table),
    };
    Node { span, value }
}

/// Reads a JSON document. serde_json checks the syntax (its errors carry
/// line and column); the tree is then rebuilt from borrowed raw values,
/// whose position inside `source` gives each value's span.
pub(super) fn read_json(source: &str, index: &LineIndex<'_>) -> Result<Node, Vec<Diagnostic>> {
    let raw: &RawValue = serde_json::from_str(source)
        .map_err(|e| vec![syntax_error(Pos { line: e.line().max(1), column: e.column().max(1) }, &e.to_string())])?;
    let mut errors = Vec::new();
    let node = json_node(raw, source, index, &mut errors);
    if errors.is_empty() { Ok(node) } else { Err(errors) }
}

fn json_node(raw: &RawValue, source: &str, index: &LineIndex<'_>, errors: &mut Vec<Diagnostic>) -> Node {
    let text = raw.get();
    // `text` borrows from `source` (the raw value is deserialized borrowed),
    // so its address tells where it sits in the document.
    let start = text.as_ptr().addr().checked_sub(source.as_ptr().addr()).filter(|&s| s <= source.len());
    let start = start.unwrap_or(0);
    let span = start..start + text.len();
    let mut fail = |e: serde_json::Error| {
        errors.push(syntax_error(index.pos(start), &e.to_string()));
        Value::Unsupported("an unreadable value")
    };
    let value = match text.as_bytes().first() {
        Some(b'{') => match serde_json::from_str::<RawEntries<'_>>(text) {
            Ok(RawEntries(entries)) => {
                let mut seen: Vec<Entry> = Vec::with_capacity(entries.len());
                for (key, raw_value) in entries {
                    let value = json_node(raw_value, source, index, errors);
                    let key_span = json_key_span(source, value.span.start).unwrap_or(value.span.clone());
                    if seen.iter().any(|e| e.key == key) {
                        errors.push(syntax_error(index.pos(key_span.start), &format!("duplicate key `{key}`")));
                    }
                    seen.push(Entry { key, key_span, value });
                }
                Value::Table(seen)
            }
            Err(e) => fail(e),
        },
        Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => Value::Array(items.into_iter().map(|v| json_node(v, source, index, errors)).collect()),
            Err(e) => fail(e),
        },
        Some(b'"') => match serde_json::from_str::<String>(text) {
            Ok(s) => Value::Str(s),
            Err(e) => fail(e),
        },
        Some(b't' | b'f') => match serde_json::from_str::<bool>(text) {
            Ok(b) => Value::Bool(b),
            Err(e) => fail(e),
        },
        Some(b'n') => Value::Unsupported("null"),
        _ => match serde_json::from_str::<serde_json::Number>(text) {
            Ok(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None if n.is_f64() => Value::Float,
                None => Value::Unsupported("an integer out of range"),
            },
            Err(e) => fail(e),
        },
    };
    Node { span, value }
}

/// The span of the quoted key written before the value starting at
/// `value_start` (`"key" : value`), found by scanning backwards.
fn json_key_span(source: &str, value_start: usize) -> Option<Range<usize>> {
    let bytes = source.as_bytes();
    let mut i = value_start;
    let skip_ws = |mut i: usize| {
        while i > 0 && bytes[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    i = skip_ws(i);
    if i == 0 || bytes[i - 1] != b':' {
        return None;
    }
    i = skip_ws(i - 1);
    if i == 0 || bytes[i - 1] != b'"' {
        return None;
    }
    let end = i;
    let mut j = end - 1;
    while j > 0 {
        j -= 1;
        if bytes[j] == b'"' {
            let backslashes = bytes[..j].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                return Some(j..end);
            }
        }
    }
    None
}

/// A JSON object's members in document order, values left unparsed.
struct RawEntries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawEntries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = RawEntries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'a RawValue>()? {
                    entries.push(entry);
                }
                Ok(RawEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

fn syntax_error(pos: Pos, message: &str) -> Diagnostic {
    // serde_json appends " at line L column C"; the position is already in
    // the diagnostic.
    let mut message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    };
    if message.is_empty() {
        let _ = write!(message, "syntax error");
    }
    Diagnostic { severity: Severity::Error, message, line: pos.line, column: pos.column, rule: None, help: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_counts_characters_from_one() {
        let index = LineIndex::new("ab\nçd\n");
        assert_eq!(index.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(index.pos(3), Pos { line: 2, column: 1 });
        assert_eq!(index.pos(5), Pos { line: 2, column: 2 });
        assert_eq!(index.pos(100), Pos { line: 3, column: 1 });
    }

    #[test]
    fn json_values_and_keys_carry_their_spans() {
        let source = "{\n  \"org\": \"acme\",\n  \"n\": [1, true]\n}";
        let index = LineIndex::new(source);
        let node = read_json(source, &index).expect("valid json");
        let Value::Table(entries) = node.value else { panic!("table expected") };
        assert_eq!(&source[entries[0].key_span.clone()], "\"org\"");
        assert_eq!(&source[entries[0].value.span.clone()], "\"acme\"");
        assert_eq!(index.pos(entries[1].value.span.start), Pos { line: 3, column: 8 });
    }

    #[test]
    fn json_duplicate_keys_are_errors() {
        let source = "{\"org\": \"a\",\n \"org\": \"b\"}";
        let errors = read_json(source, &LineIndex::new(source)).expect_err("duplicate");
        assert_eq!((errors[0].line, errors[0].column), (2, 2));
        assert_eq!(errors[0].message, "duplicate key `org`");
    }

    #[test]
    fn toml_tables_keep_document_order() {
        let source = "zeta = 1\nalpha = 2\n";
        let node = read_toml(source, &LineIndex::new(source)).expect("valid toml");
        let Value::Table(entries) = node.value else { panic!("table expected") };
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha"]);
    }
}
