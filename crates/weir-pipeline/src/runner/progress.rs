//! Progress, stalls and partial windows: what a pipeline says about itself
//! in logs, status and metrics.

use super::*;

impl Pipeline {
    /// No records arrived: warns (once per `source.stall_warn_ms`) when the
    /// source has had no partitions, or lag without progress, for that long;
    /// clears the stall when neither holds any more.
    pub(super) fn check_stall(&self, stall: &mut StallWatch) {
        let Some(after) = stall.after else {
            return;
        };
        let assigned = self.source.assigned_partitions();
        if assigned == Some(0) {
            stall.unassigned_since.get_or_insert_with(Instant::now);
        } else {
            stall.unassigned_since = None;
        }
        let lag = self.source.lag().unwrap_or(0);
        let why = match (assigned, stall.unassigned_since) {
            (Some(0), Some(since)) if since.elapsed() >= after => format!(
                "no partitions assigned for {} s (expected only while the group has more members than partitions; otherwise check the broker's group coordinator)",
                since.elapsed().as_secs()
            ),
            (Some(n), _) if n > 0 && lag > 0 && stall.since.elapsed() >= after => format!(
                "consumer lag {lag} and no record received for {} s",
                stall.since.elapsed().as_secs()
            ),
            _ => {
                self.clear_stall();
                return;
            }
        };
        let message = match &self.config.source {
            SourceConfig::Kafka { group, topics, .. } => format!(
                "stalled: {why} (group `{group}`, topics {}); `source.stall_warn_ms` = {}",
                topics.join(", "),
                after.as_millis()
            ),
            SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => {
                format!("stalled: {why}")
            }
        };
        if stall.warned_at.is_none_or(|t| t.elapsed() >= after) {
            tracing::warn!(pipeline = %self.config.name, "{message}");
            stall.warned_at = Some(Instant::now());
        }
        self.stats.stalled.set(1);
        self.stats.set_condition(Some(message));
    }

    /// A windowed pipeline must see every partition of its source: with
    /// some owned by other members of its group, each member's windows
    /// hold part of the records and their results are partial. Said loudly
    /// (log, `weir_pipeline_partial_windows`) for as long as it lasts.
    pub(super) fn check_partial_windows(&self) {
        // A windows stage owns whole keys, whichever partitions it reads.
        if (self.windows.is_none() && self.joins.is_none()) || self.origin.is_some() {
            return;
        }
        let (Some(assigned), Some(known)) = (
            self.source.assigned_partitions(),
            self.source.known_partitions(),
        ) else {
            return;
        };
        let partial = assigned > 0 && assigned < known;
        if partial && self.stats.partial_windows.swap(1) == 0 {
            let group = match &self.config.source {
                SourceConfig::Kafka { group, .. } => group.as_str(),
                SourceConfig::File { .. } | SourceConfig::Nexmark { .. } => "",
            };
            tracing::error!(
                pipeline = %self.config.name,
                tenant = %self.config.tenant,
                "this pipeline keeps state (windows or a join of the stream with itself) and owns {assigned} of its source's {known} partitions: other members of group `{group}` read the rest, so every member's results are partial; run it in one process (a `weir serve` cluster runs it on one node), or re-key a windowed query with `source.repartition = true`"
            );
        } else if !partial && assigned > 0 && self.stats.partial_windows.swap(0) == 1 {
            tracing::info!(pipeline = %self.config.name, "the stateful pipeline owns every partition again");
        }
    }

    pub(super) fn clear_stall(&self) {
        if self.stats.stalled.swap(0) == 1 {
            self.stats.set_condition(None);
            tracing::info!(pipeline = %self.config.name, "no longer stalled");
        }
    }

    pub(super) fn log_progress(&self, elapsed: Duration) {
        let s = &self.stats;
        let records_in = s.records_in.get();
        tracing::info!(
            pipeline = %self.config.name,
            records_in,
            records_out = s.records_out.get(),
            dead_letters = s.dead_letters.get(),
            skipped = s.skipped.get(),
            records_per_s = (records_in as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
            lag = self.source.lag(),
            "progress"
        );
    }
}

/// When records last arrived, since when no partition is assigned, and
/// when a stall was last reported.
pub(super) struct StallWatch {
    pub(super) after: Option<Duration>,
    pub(super) since: Instant,
    pub(super) unassigned_since: Option<Instant>,
    pub(super) warned_at: Option<Instant>,
}

impl StallWatch {
    pub(super) fn new(after_ms: u64) -> Self {
        StallWatch {
            after: (after_ms > 0).then(|| Duration::from_millis(after_ms)),
            since: Instant::now(),
            unassigned_since: None,
            warned_at: None,
        }
    }

    pub(super) fn progress(&mut self) {
        self.since = Instant::now();
        self.warned_at = None;
    }
}
