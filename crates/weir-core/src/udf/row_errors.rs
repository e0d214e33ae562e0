//! Collecting row errors instead of failing the query: while a collector is
//! active, a UDF that reports an error for a row returns NULL for it and
//! leaves the error here. A pipeline uses this to set aside the failing
//! records of a micro-batch in one query run instead of bisecting it.

use parking_lot::Mutex;

use crate::sandbox::RowFailures;

/// The row errors of one UDF call.
#[derive(Debug)]
pub struct CollectedCall {
    /// Rows the call had (equal to the query's input rows when the UDF saw
    /// every row, in order).
    pub rows: usize,
    /// The failing rows, row numbers of the call.
    pub errors: RowFailures,
}

/// Shared by the UDFs registered for one query.
#[derive(Debug, Default)]
pub struct RowErrorCollector {
    calls: Mutex<Option<Vec<CollectedCall>>>,
}

impl RowErrorCollector {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Option<Vec<CollectedCall>>> {
        self.calls.lock()
    }

    /// From now on row errors are collected.
    pub fn start(&self) {
        *self.lock() = Some(Vec::new());
    }

    /// Stops collecting; the calls that had row errors.
    pub fn finish(&self) -> Vec<CollectedCall> {
        self.lock().take().unwrap_or_default()
    }

    pub(crate) fn is_active(&self) -> bool {
        self.lock().is_some()
    }

    pub(crate) fn push(&self, call: CollectedCall) {
        if let Some(calls) = self.lock().as_mut() {
            calls.push(call);
        }
    }
}
