//! The registry's error type and its one mapping to HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything that can go wrong in the registry. Turned into the distribution-spec error
/// JSON by the [`IntoResponse`] impl below, and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NameInvalid(String),
    #[error("Repository {0:?} is not known")]
    NameUnknown(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("Manifest {reference:?} is not known in repository {name:?}")]
    ManifestUnknown { name: String, reference: String },
    #[error("Blob {digest} is not known in repository {name:?}")]
    BlobUnknown { name: String, digest: String },
    #[error("Upload {0:?} is not known")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("Chunk starts at byte {got} but the upload has {expected} bytes")]
    RangeInvalid {
        /// The upload's URL path, sent back as `Location` with its current `Range`.
        location: String,
        expected: u64,
        got: u64,
    },
    #[error("{0}")]
    ContentRangeInvalid(String),
    #[error("Requested range {0:?} cannot be served")]
    RangeNotSatisfiable(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("Manifest is {0} bytes, more than the 4 MiB limit")]
    ManifestTooLarge(u64),
    #[error("Manifest references {kind} {digest}, which is not in the repository")]
    ManifestBlobUnknown { kind: &'static str, digest: String },
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("Authentication required")]
    Unauthorized {
        realm: String,
        scope: Option<String>,
    },
    #[error("Access to repository {0:?} is denied")]
    Denied(String),
    #[error(
        "App {app:?} would hold {wanted} bytes in the registry; its quota is {quota} bytes \
         (the operator's --registry-quota-per-app); delete images (`aloft image rm`) or ask for more"
    )]
    QuotaExceeded {
        app: String,
        wanted: u64,
        quota: u64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("Failed to {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Repository metadata file {path} is not valid")]
    MetadataCorrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("A registry worker task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl RegistryError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            context: context.into(),
            source,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError as E;
        match self {
            E::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            E::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            E::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            E::ManifestUnknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            E::BlobUnknown { .. } => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            E::BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            E::BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            E::RangeInvalid { .. } | E::ContentRangeInvalid(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
            }
            E::RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            E::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            E::SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            E::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            E::ManifestTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            E::ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            E::PaginationInvalid(_) => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
            E::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            E::Denied(_) | E::QuotaExceeded { .. } => (StatusCode::FORBIDDEN, "DENIED"),
            E::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            E::Io { .. } | E::MetadataCorrupt { .. } | E::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
        }
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %chain(&self), "Registry request failed");
            "Internal registry error".to_owned()
        } else {
            tracing::debug!(error = %self, code, "Registry request rejected");
            self.to_string()
        };
        let detail = match &self {
            RegistryError::ManifestBlobUnknown { digest, .. } => json!({ "digest": digest }),
            RegistryError::BlobUnknown { digest, .. } => json!({ "digest": digest }),
            RegistryError::ManifestUnknown { reference, .. } => json!({ "reference": reference }),
            RegistryError::NameUnknown(name) => json!({ "name": name }),
            _ => serde_json::Value::Null,
        };
        let body = json!({ "errors": [{ "code": code, "message": message, "detail": detail }] });
        let mut response = (status, axum::Json(body)).into_response();
        if let RegistryError::RangeInvalid {
            location, expected, ..
        } = &self
        {
            let range = format!("0-{}", expected.saturating_sub(1));
            for (name, value) in [
                (header::LOCATION, location.as_str()),
                (header::RANGE, range.as_str()),
            ] {
                if let Ok(v) = HeaderValue::from_str(value) {
                    response.headers_mut().insert(name, v);
                }
            }
        }
        if let RegistryError::Unauthorized { realm, scope } = &self {
            let mut value = format!("Bearer realm=\"{realm}\",service=\"aloft\"");
            if let Some(scope) = scope {
                value.push_str(&format!(",scope=\"{scope}\""));
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}
