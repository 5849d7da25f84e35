//! Typed, located reads from a parsed TOML document.
//!
//! A [`Tbl`] wraps one table (standard or inline) with its display path. Each getter checks the
//! value's type and range and, when it is wrong, records a [`Diagnostic`] at the value's position
//! and returns `None`, so parsing goes on and every problem in the file is reported at once.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use crate::diag::{line_col, suggest, Diagnostic, Span, Warning};
use crate::units::parse_duration;

/// Collects diagnostics for one file.
pub(crate) struct Ctx<'s> {
    pub file: String,
    pub text: &'s str,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Warning>,
}

impl<'s> Ctx<'s> {
    pub fn new(file: &str, text: &'s str) -> Self {
        Ctx {
            file: file.to_owned(),
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, span: &Span, key: String, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            key,
            message,
        });
    }

    pub fn warn(&mut self, span: &Span, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.warnings.push(Warning {
            file: self.file.clone(),
            line,
            column,
            message,
        });
    }
}

/// One table of the document with the path used to name its keys.
#[derive(Clone)]
pub(crate) struct Tbl<'a> {
    pub table: &'a dyn TableLike,
    pub path: String,
    pub span: Option<Span>,
}

/// Describes a TOML value for "found …" in messages.
pub(crate) fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::None => "nothing".to_owned(),
    }
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", s.value()),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Datetime(d) => d.value().to_string(),
        Value::Array(_) => "an array".to_owned(),
        Value::InlineTable(_) => "a table".to_owned(),
    }
}

impl<'a> Tbl<'a> {
    /// The display name of `key` in this table, e.g. `[http_service] internal_port`.
    pub fn label(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("[{}] {}", self.path, key)
        }
    }

    /// The path of a child table.
    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Where the table starts (its header, or 0 for the root).
    pub fn start(&self) -> Span {
        self.span.clone().unwrap_or(0..0)
    }

    /// The value of `key` and where it is.
    pub fn get(&self, key: &str) -> Option<(&'a Item, Span)> {
        let (k, item) = self.table.get_key_value(key)?;
        let span = item
            .span()
            .or_else(|| k.span())
            .unwrap_or_else(|| self.start());
        Some((item, span))
    }

    /// Where `key` itself is written.
    pub fn key_span(&self, key: &str) -> Span {
        self.table
            .key(key)
            .and_then(|k| k.span())
            .unwrap_or_else(|| self.start())
    }

    /// Warns about every key not in `known`; `ignored` keys are Fly's and get a gentler warning.
    pub fn check_keys(&self, ctx: &mut Ctx<'_>, known: &[&str], ignored: &[&str]) {
        for (key, _) in self.table.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = self.key_span(key);
            let name = self.label(key);
            let message = if ignored.contains(&key) {
                format!("key {name} is not supported by Aloft and is ignored")
            } else {
                match suggest(key, known.iter().copied()) {
                    Some(s) => format!("unknown key '{key}' (did you mean '{s}'?)"),
                    None if self.path.is_empty() => format!("unknown key '{key}'"),
                    None => format!("unknown key '{key}' in [{}]", self.path),
                }
            };
            ctx.warn(&span, message);
        }
    }

    fn mismatch(&self, ctx: &mut Ctx<'_>, key: &str, item: &Item, span: &Span, expected: &str) {
        let message = format!("expected {expected}, found {}", describe(item));
        ctx.error(span, self.label(key), message);
    }

    /// Records that a required key is missing.
    pub fn missing(&self, ctx: &mut Ctx<'_>, key: &str) {
        let span = self.start();
        let message = format!("missing required key '{key}'");
        let label = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("[{}]", self.path)
        };
        ctx.error(&span, label, message);
    }

    pub fn str(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<String> {
        let (item, span) = self.get(key)?;
        match item.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.mismatch(ctx, key, item, &span, "a string");
                None
            }
        }
    }

    pub fn bool(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let (item, span) = self.get(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.mismatch(ctx, key, item, &span, "true or false");
                None
            }
        }
    }

    /// An integer within `range`.
    pub fn int(&self, ctx: &mut Ctx<'_>, key: &str, range: RangeInclusive<i64>) -> Option<i64> {
        let (item, span) = self.get(key)?;
        match item.as_integer() {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                let expected = if *range.end() >= i64::from(u32::MAX) {
                    format!("an integer of at least {}", range.start())
                } else {
                    format!("an integer {}..={}", range.start(), range.end())
                };
                self.mismatch(ctx, key, item, &span, &expected);
                None
            }
        }
    }

    pub fn u32(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<u32> {
        self.int(ctx, key, 0..=i64::from(u32::MAX))
            .map(|n| n as u32)
    }

    /// A port number 1..=65535.
    ///
    /// A string of digits (`port = "80"`) is accepted too, as flyctl does.
    pub fn port(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<u16> {
        if let Some((item, _)) = self.get(key) {
            if let Some(port) = item.as_str().and_then(|s| s.parse::<u16>().ok()) {
                if port > 0 {
                    return Some(port);
                }
            }
        }
        self.int(ctx, key, 1..=65535).map(|n| n as u16)
    }

    /// One of a fixed set of words.
    pub fn word(&self, ctx: &mut Ctx<'_>, key: &str, allowed: &[&str]) -> Option<String> {
        let (item, span) = self.get(key)?;
        match item.as_str() {
            Some(s) if allowed.contains(&s) => Some(s.to_owned()),
            _ => {
                let list = allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.mismatch(ctx, key, item, &span, &format!("one of {list}"));
                None
            }
        }
    }

    /// A duration: a Fly duration string (`"10s"`, `"1m30s"`) or an integer number of seconds.
    pub fn duration(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<Duration> {
        self.duration_in(ctx, key, Duration::from_secs(1), "whole seconds")
    }

    /// A check duration: a Fly duration string, or an integer number of milliseconds as old
    /// `fly.toml` files write them (`interval = 10000`).
    pub fn check_duration(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<Duration> {
        self.duration_in(ctx, key, Duration::from_millis(1), "whole milliseconds")
    }

    fn duration_in(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
        unit: Duration,
        unit_words: &str,
    ) -> Option<Duration> {
        let (item, span) = self.get(key)?;
        let parsed = match item {
            Item::Value(Value::Integer(n)) => u32::try_from(*n.value()).ok().map(|n| unit * n),
            Item::Value(Value::String(s)) => parse_duration(s.value()),
            _ => None,
        };
        if parsed.is_none() {
            let expected =
                format!("a duration such as \"10s\", \"1m30s\" or \"500ms\", or {unit_words}");
            self.mismatch(ctx, key, item, &span, &expected);
        }
        parsed
    }

    /// An array of strings.
    pub fn strings(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<Vec<String>> {
        let (item, span) = self.get(key)?;
        let strings = item.as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
        if strings.is_none() {
            self.mismatch(ctx, key, item, &span, "an array of strings");
        }
        strings
    }

    /// A table whose values are all strings, e.g. `[env]` or `headers`.
    pub fn string_map(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<BTreeMap<String, String>> {
        Some(self.table_at(ctx, key)?.as_string_map(ctx))
    }

    /// This table's entries, which must all be strings.
    pub fn as_string_map(&self, ctx: &mut Ctx<'_>) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (name, item) in self.table.iter() {
            let span = item.span().unwrap_or_else(|| self.key_span(name));
            match item.as_str() {
                Some(s) => {
                    map.insert(name.to_owned(), s.to_owned());
                }
                None => self.mismatch(ctx, name, item, &span, "a string"),
            }
        }
        map
    }

    /// A sub-table (`[a.b]` or `b = { … }`).
    pub fn table_at(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<Tbl<'a>> {
        let (item, span) = self.get(key)?;
        match item.as_table_like() {
            Some(table) => Some(Tbl {
                table,
                path: self.child_path(key),
                span: Some(span),
            }),
            None => {
                self.mismatch(ctx, key, item, &span, "a table");
                None
            }
        }
    }

    /// A list of tables: `[[a]]`, `a = [{…}, …]`, or a single `[a]` table.
    pub fn tables_at(&self, ctx: &mut Ctx<'_>, key: &str) -> Vec<Tbl<'a>> {
        let Some((item, span)) = self.get(key) else {
            return Vec::new();
        };
        let path = self.child_path(key);
        match item {
            Item::ArrayOfTables(array) => array
                .iter()
                .map(|t| Tbl {
                    table: t,
                    path: path.clone(),
                    span: t.span(),
                })
                .collect(),
            Item::Table(t) => vec![Tbl {
                table: t,
                path,
                span: t.span(),
            }],
            Item::Value(Value::InlineTable(t)) => vec![Tbl {
                table: t,
                path,
                span: t.span(),
            }],
            Item::Value(Value::Array(array)) => {
                let mut tables = Vec::new();
                for value in array.iter() {
                    match value {
                        Value::InlineTable(t) => tables.push(Tbl {
                            table: t,
                            path: path.clone(),
                            span: t.span(),
                        }),
                        other => {
                            let span = other.span().unwrap_or_else(|| span.clone());
                            let message =
                                format!("expected a table, found {}", describe_value(other));
                            ctx.error(&span, self.label(key), message);
                        }
                    }
                }
                tables
            }
            other => {
                self.mismatch(ctx, key, other, &span, "a table or an array of tables");
                Vec::new()
            }
        }
    }
}
