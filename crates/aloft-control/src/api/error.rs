//! The one place errors become HTTP statuses: every service error maps to an [`ApiError`],
//! whose `IntoResponse` answers with the status and `{"error": "..."}`. Internal failures are
//! logged with their whole chain and answered with a generic message.

use aloft_api::error::error_chain;
use aloft_api::ErrorBody;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::BODY_LIMIT;
use crate::core::StoreError;
use crate::services::acme::AcmeError;
use crate::services::apps::AppError;
use crate::services::autoscale::AutoscaleError;
use crate::services::certs::CertError;
use crate::services::deploys::DeployServiceError;
use crate::services::exec::{ExecError, Refusal};
use crate::services::hosts::HostError;
use crate::services::image::ImageRefError;
use crate::services::ips::IpError;
use crate::services::machines::MachineError;
use crate::services::placement::PlacementError;
use crate::services::releases::ReleaseError;
use crate::services::routes::RouteError;
use crate::services::secrets::SecretsError;
use crate::services::tokens::TokenError;

/// Every way an API call fails; `IntoResponse` turns it into a status and `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Precondition(String),
    /// Well-formed, but the server cannot do it as configured (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The token's request rate is over the operator's limit (429, with `Retry-After`).
    #[error("Too many requests with this token; retry in {0} s (the operator's --api-rate-limit)")]
    TooManyRequests(u64),
    /// Logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::TooManyRequests(secs) => Some(*secs),
            _ => None,
        };
        let error = match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "API request failed");
                "Internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error })).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// An internal failure: the whole chain is logged, none of it is shown.
fn internal(e: &dyn std::error::Error) -> ApiError {
    ApiError::Internal(error_chain(e))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::AppNotFound(_)
            | StoreError::OrgNotFound(_)
            | StoreError::TokenNotFound(_)
            | StoreError::MachineNotFound { .. }
            | StoreError::HostNotFound(_) => ApiError::NotFound(message),
            StoreError::AppExists(_) | StoreError::OrgExists(_) => ApiError::Conflict(message),
            StoreError::AppHasMachines { .. } | StoreError::OrgHasApps { .. } => {
                ApiError::Precondition(message)
            }
            StoreError::HostIndexOutOfRange(_) => ApiError::BadRequest(message),
            StoreError::HostIndexesExhausted => ApiError::Unavailable(message),
            StoreError::Open { .. }
            | StoreError::Permissions { .. }
            | StoreError::Migrate { .. }
            | StoreError::Query(_)
            | StoreError::Encoding { .. } => internal(&e),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(e) => e.into(),
            TokenError::OrgNotFound(_) => ApiError::NotFound(e.to_string()),
            TokenError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::InvalidName(_) | AppError::InvalidOrg(_) | AppError::InvalidOrgName => {
                ApiError::BadRequest(e.to_string())
            }
            AppError::DefaultOrg(_) => ApiError::Conflict(e.to_string()),
            AppError::OrgNotFound(_) => ApiError::NotFound(e.to_string()),
            AppError::Store(e) => e.into(),
        }
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Invalid(message) => ApiError::BadRequest(message),
            HostError::Exists(_) => ApiError::Conflict(e.to_string()),
            HostError::HasMachines { .. } => ApiError::Precondition(e.to_string()),
            HostError::Store(e) => e.into(),
        }
    }
}

impl From<ImageRefError> for ApiError {
    fn from(e: ImageRefError) -> Self {
        match e {
            ImageRefError::OtherApp { .. } => ApiError::Forbidden(e.to_string()),
            ImageRefError::Empty | ImageRefError::Invalid(..) => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        match e {
            PlacementError::UnknownRegion { .. } => ApiError::BadRequest(e.to_string()),
            PlacementError::NoLiveHost { .. } | PlacementError::NoCapacity { .. } => {
                ApiError::Precondition(e.to_string())
            }
        }
    }
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::Invalid(message) => ApiError::BadRequest(message),
            SecretsError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            SecretsError::Store(e) => e.into(),
            SecretsError::Key(_) | SecretsError::Decrypt { .. } => internal(&e),
        }
    }
}

impl From<MachineError> for ApiError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::Invalid(message) => ApiError::BadRequest(message),
            MachineError::Image(e) => e.into(),
            MachineError::Placement(e) => e.into(),
            MachineError::Unplaceable(message) | MachineError::WrongState(message) => {
                ApiError::Precondition(message)
            }
            MachineError::Transition { .. } => ApiError::Precondition(e.to_string()),
            MachineError::NotFound(message) => ApiError::NotFound(message),
            MachineError::Leased(message) | MachineError::StaleReport(message) => {
                ApiError::Conflict(message)
            }
            MachineError::Timeout(message) => ApiError::Timeout(message),
            MachineError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            MachineError::HostUnavailable(message) => ApiError::Unavailable(message),
            MachineError::Limit(e) => ApiError::Forbidden(e.to_string()),
            MachineError::Secrets(e) => e.into(),
            MachineError::Store(e) => e.into(),
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Invalid(message) => ApiError::BadRequest(message),
            ExecError::Machine(e) => e.into(),
            ExecError::Refused { kind, message } => match kind {
                Refusal::Invalid => ApiError::BadRequest(message),
                Refusal::NotFound => ApiError::NotFound(message),
                Refusal::WrongState => ApiError::Precondition(message),
            },
            ExecError::Unreachable { .. } | ExecError::AgentFailed { .. } => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::Invalid(message) => ApiError::BadRequest(message),
            ReleaseError::Image(e) => e.into(),
            ReleaseError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ReleaseError::Store(e) => e.into(),
        }
    }
}

impl From<AutoscaleError> for ApiError {
    fn from(e: AutoscaleError) -> Self {
        match e {
            AutoscaleError::Invalid(message) => ApiError::BadRequest(message),
            AutoscaleError::Host(e) => e.into(),
            AutoscaleError::Machine(e) => e.into(),
            AutoscaleError::Store(e) => e.into(),
        }
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::Invalid(message) => ApiError::BadRequest(message),
            CertError::HostnameTaken { .. }
            | CertError::PlatformName { .. }
            | CertError::Reserved(_)
            | CertError::DnsNamesOther { .. } => ApiError::Conflict(e.to_string()),
            CertError::Unproven { .. } => ApiError::Unprocessable(e.to_string()),
            CertError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CertError::Store(e) => e.into(),
            CertError::Ca(_) | CertError::Key(_) | CertError::Sealed(_) => internal(&e),
        }
    }
}

impl From<AcmeError> for ApiError {
    fn from(e: AcmeError) -> Self {
        match e {
            AcmeError::NotConfigured | AcmeError::Wildcard(_) => {
                ApiError::BadRequest(e.to_string())
            }
            AcmeError::Cert(e) => e.into(),
            AcmeError::Store(e) => e.into(),
            e => internal(&e),
        }
    }
}

impl From<IpError> for ApiError {
    fn from(e: IpError) -> Self {
        match e {
            IpError::InvalidAddress(_) => ApiError::BadRequest(e.to_string()),
            IpError::NoPool(_) => ApiError::Unprocessable(e.to_string()),
            IpError::PoolsFull { .. } => ApiError::Conflict(e.to_string()),
            IpError::NotHeld { .. } => ApiError::NotFound(e.to_string()),
            IpError::Store(e) => e.into(),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Store(e) => e.into(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("Request body is larger than {BODY_LIMIT} bytes"))
        } else {
            ApiError::BadRequest(format!("Cannot read request body: {}", r.body_text()))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<DeployServiceError> for ApiError {
    fn from(e: DeployServiceError) -> Self {
        match e {
            DeployServiceError::Invalid(m) => ApiError::BadRequest(m),
            DeployServiceError::Busy { .. } | DeployServiceError::Finished { .. } => {
                ApiError::Conflict(e.to_string())
            }
            DeployServiceError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            DeployServiceError::Release(e) => e.into(),
            DeployServiceError::Store(e) => e.into(),
            DeployServiceError::Corrupt { .. } => internal(&e),
        }
    }
}
