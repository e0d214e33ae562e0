//! weir's errors as PostgreSQL errors: the SQLSTATE a client branches on
//! (syntax 42601, undefined function 42883, permission 42501, limits
//! 53xxx/54xxx, cancel 57014), weir's message naming the key in force.

use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::ServiceError;

/// The SQLSTATE of a refused or failed query.
pub fn code(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Unauthenticated(_) => "28000",
        ServiceError::Forbidden(_) | ServiceError::NotFound(_) => "42501",
        ServiceError::Timeout(_) => "57014",
        ServiceError::RateLimited(_) => "53400",
        // The shared database does not answer: retry (cannot_connect_now).
        ServiceError::Unavailable(_) => "57P03",
        ServiceError::BadRequest(m) | ServiceError::Rejected(m) => of_message(m),
        _ => "XX000",
    }
}

/// A refusal by its message (DataFusion's errors carry no code).
fn of_message(m: &str) -> &'static str {
    let lower = m.to_ascii_lowercase();
    if lower.contains("parsererror")
        || lower.contains("syntax error")
        || lower.contains("sql error")
    {
        "42601"
    } else if lower.contains("invalid function")
        || lower.contains("function") && lower.contains("not found")
    {
        "42883"
    } else if lower.contains("unrecognized configuration parameter") {
        "42704"
    } else if lower.contains("table") && lower.contains("not found") {
        "42P01"
    } else if lower.contains("query_memory_bytes") || lower.contains("resources exhausted") {
        "53200"
    } else if lower.contains("cpu") || lower.contains("ran out of") {
        "54000"
    } else {
        "42000"
    }
}

/// `e` as an error message to the client.
pub fn error(e: &ServiceError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code(e).to_string(),
        e.to_string(),
    )))
}
