//! The error body every 4xx/5xx answer carries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": "message"}`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A message naming what is wrong.
    pub error: String,
}
