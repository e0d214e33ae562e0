//! What this crate's public functions fail with: whose move it is next.
//!
//! A pipeline that cannot be built because of what it says (its TOML, its
//! query, a function or resource it names) is the user's to fix; one whose
//! schema registry does not answer may build on a later try; one that
//! stopped while running failed at a source, a sink or a transaction.
//! Callers tell them apart by variant (`weir serve` answers 422, 503 and
//! 500), never by an error's text.

/// A pipeline's error, with the whole chain of what went wrong in its text
/// (`{}` and `{:#}` print the same).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The pipeline as written cannot run: its file or TOML, its query, a
    /// function it calls, a resource its tenant may not use. Retrying the
    /// same pipeline fails the same way.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// A service the pipeline names did not answer while it was built (a
    /// schema registry): the same pipeline may build on a later try.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
    /// The pipeline stopped on an error while running (its source, a sink,
    /// a transaction, a task that ended).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl PipelineError {
    /// A build's error: [`PipelineError::Unavailable`] when a service the
    /// pipeline names did not answer, else [`PipelineError::Invalid`].
    pub(crate) fn building(error: anyhow::Error) -> Self {
        let unreachable = error.chain().any(|e| {
            matches!(
                e.downcast_ref::<crate::avro::registry::RegistryError>(),
                Some(crate::avro::registry::RegistryError::Unreachable { .. })
            )
        });
        if unreachable {
            PipelineError::Unavailable(error)
        } else {
            PipelineError::Invalid(error)
        }
    }

    /// What went wrong, with its chain.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            PipelineError::Invalid(e)
            | PipelineError::Unavailable(e)
            | PipelineError::Failed(e) => e,
        }
    }
}
