//! The one error of the control plane's services, and the one place it
//! becomes an HTTP status. Services return it without knowing HTTP; the
//! handlers only pass it on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::database::DatabaseError;
use crate::registry::RegistryError;

/// What went wrong, in the user's words, by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is malformed (JSON, TOML, a name, a version).
    #[error("{0}")]
    BadRequest(String),
    /// No (known) bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role, or the tenant's policy (files, brokers, topics),
    /// does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// No such object — also for another tenant's objects.
    #[error("{0}")]
    NotFound(String),
    /// It clashes with the current state (a name taken, a pinned version).
    #[error("{0}")]
    Conflict(String),
    /// The body is not in a format this endpoint takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but refused: the sandbox refused the module, the query
    /// or pipeline could not be planned or built.
    #[error("{0}")]
    Rejected(String),
    /// It ran over its time limit.
    #[error("{0}")]
    Timeout(String),
    /// The token is over its request rate.
    #[error("{0}")]
    RateLimited(String),
    /// weir's own fault (storage, I/O).
    #[error("{0}")]
    Internal(String),
    /// The cluster's shared database does not answer (retry).
    #[error("{0}")]
    Unavailable(String),
}

/// The message of an error answer, kept on the response for the audit log.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ServiceError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServiceError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServiceError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ServiceError::BadRequest(m)
            | ServiceError::Unauthenticated(m)
            | ServiceError::Forbidden(m)
            | ServiceError::NotFound(m)
            | ServiceError::Conflict(m)
            | ServiceError::UnsupportedMediaType(m)
            | ServiceError::Rejected(m)
            | ServiceError::Timeout(m)
            | ServiceError::RateLimited(m)
            | ServiceError::Internal(m)
            | ServiceError::Unavailable(m) => m,
        }
    }

    /// `"{what} not found"`.
    pub fn not_found(what: &str) -> Self {
        ServiceError::NotFound(format!("{what} not found"))
    }

    /// weir's own failure, given as text (`500`). A registry's or the
    /// shared database's error converts with `From` instead, which keeps
    /// "the database does not answer" apart (`503`, for the caller to
    /// retry).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(m) => ServiceError::Unavailable(m),
            RegistryError::Storage(m) => ServiceError::Internal(m),
        }
    }
}

impl From<crate::pipeline::PipelineError> for ServiceError {
    /// A pipeline that cannot run as written is refused (`422`); one whose
    /// registry did not answer is `503`, to be tried again; one that
    /// stopped on an error is weir's side (`500`).
    fn from(e: crate::pipeline::PipelineError) -> Self {
        use crate::pipeline::PipelineError;
        match e {
            PipelineError::Invalid(e) => ServiceError::Rejected(format!("{e:#}")),
            PipelineError::Unavailable(e) => {
                ServiceError::Unavailable(format!("{e:#}; try again when it answers"))
            }
            PipelineError::Failed(e) => ServiceError::Internal(format!("{e:#}")),
        }
    }
}

impl From<DatabaseError> for ServiceError {
    fn from(e: DatabaseError) -> Self {
        RegistryError::from(e).into()
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let message = self.message().to_string();
        let mut response = (self.status(), Json(json!({ "error": message }))).into_response();
        response.extensions_mut().insert(ErrorMessage(message));
        response
    }
}

/// What services return.
pub type ServiceResult<T> = Result<T, ServiceError>;
