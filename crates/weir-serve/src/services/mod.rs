//! The control plane's domain services: what the API does, without HTTP.
//! Each returns [`ServiceError`](crate::error::ServiceError), mapped to a
//! status in one place.

pub mod boundary;
pub mod pipelines;
pub mod query;
pub mod staged;
pub mod tokens;
pub mod udfs;
