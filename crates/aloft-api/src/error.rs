//! The error body every 4xx/5xx answer carries, and how an error's chain is written into one.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": "message"}`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A message naming what is wrong.
    pub error: String,
}

/// An error and its sources as one line, `outer: inner: innermost`: for logs and error bodies
/// where the chain is printed once.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_source_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
