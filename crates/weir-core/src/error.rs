//! Messages for users from errors of the layers below weir.

use datafusion::error::DataFusionError;

/// The most useful message of a DataFusion error: the UDF's own error when a
/// UDF failed, the plain message otherwise.
pub fn user_message(err: &DataFusionError) -> String {
    match err.find_root() {
        DataFusionError::External(inner) => inner.to_string(),
        root => root.strip_backtrace(),
    }
}
