//! Diagnostics: errors and warnings that point at a file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// A byte range into the configuration text.
pub type Span = Range<usize>;

/// One problem found in a configuration file, located at 1-based `line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`crate::parse`] (or the path [`crate::load_dir`] read).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// The key the problem is about, e.g. `[http_service] internal_port`; empty for syntax errors.
    pub key: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A problem that does not stop the file from loading, such as an unknown key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the warning points.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The warning text, e.g. `unknown key 'primary_regoin' (did you mean 'primary_region'?)`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `aloft.toml` nor `fly.toml` exists in the directory.
    #[error("No aloft.toml or fly.toml in {}", dir.display())]
    NotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("Could not read {}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not follow the schema; every problem found is listed.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems, if the error is about the file's contents.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Converts a byte offset into a 1-based line and a 1-based column counted in characters.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The closest candidate to `input`, if one is close enough to be a likely typo.
pub fn suggest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let text = "a = 1\nbb = \"é\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // The column after a two-byte character counts it once.
        let after_e = text.find('é').unwrap() + 'é'.len_utf8();
        assert_eq!(line_col(text, after_e), (2, 8));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn suggestions_pick_the_closest_key_only_when_close() {
        let keys = ["primary_region", "app", "kill_signal"];
        assert_eq!(suggest("primary_regoin", keys), Some("primary_region"));
        assert_eq!(suggest("kill_signl", keys), Some("kill_signal"));
        assert_eq!(suggest("zzz", keys), None);
    }
}
