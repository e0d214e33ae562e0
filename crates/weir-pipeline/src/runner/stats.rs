//! A pipeline's counters and gauges (status pages, the metrics recorder).

use super::*;

/// Counters of one pipeline (read by status pages, mirrored to the
/// metrics recorder with labels `tenant`, `pipeline`).
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub records_in: Count,
    pub records_out: Count,
    pub dead_letters: Count,
    pub skipped: Count,
    pub batches: Count,
    /// Consumer lag summed over the assigned partitions (-1: unknown).
    pub lag: Level,
    /// 1 while the source is paused by backpressure.
    pub paused: Level,
    /// 1 while the source is paused because a UDF's circuit breaker is open.
    pub breaker_paused: Level,
    /// 1 while the pipeline has no partitions, or lag and no progress, for
    /// longer than `source.stall_warn_ms`.
    pub stalled: Level,
    /// 1 while a windowed pipeline owns only some of its source's
    /// partitions (its windows miss the others' records).
    pub partial_windows: Level,
    /// Records behind the watermark whose windows were already emitted.
    pub late: Count,
    pub windows_emitted: Count,
    pub open_windows: Level,
    pub window_state_bytes: Level,
    pub checkpoints: Count,
    pub checkpoint_bytes: Level,
    /// Event-time watermark in seconds (0 before the first record).
    pub watermark: Level,
    /// Kafka transactions of an exactly-once sink.
    pub transactions_committed: Count,
    pub transactions_aborted: Count,
    /// What holds the pipeline up right now, in words (breaker or stall).
    pub(super) condition: parking_lot::Mutex<Option<String>>,
    /// The source's partitions (`topic/partition`), refreshed between
    /// micro-batches.
    pub(super) partitions: parking_lot::Mutex<Vec<String>>,
}

impl PipelineStats {
    /// The counters of pipeline `name` of `tenant`.
    pub fn new(tenant: &str, name: &str) -> Self {
        let l: telemetry::Labels = vec![
            ("tenant", tenant.to_string()),
            ("pipeline", name.to_string()),
        ];
        let count = |n| Count::new(telemetry::counter(n, &l));
        let level = |n| Level::new(telemetry::gauge(n, &l), 0);
        PipelineStats {
            records_in: count(telemetry::PIPELINE_RECORDS_IN),
            records_out: count(telemetry::PIPELINE_RECORDS_OUT),
            dead_letters: count(telemetry::PIPELINE_DEAD_LETTERS),
            skipped: count(telemetry::PIPELINE_SKIPPED),
            batches: count(telemetry::PIPELINE_BATCHES),
            lag: Level::unknown(telemetry::gauge(telemetry::PIPELINE_LAG, &l)),
            paused: level(telemetry::PIPELINE_PAUSED),
            breaker_paused: level(telemetry::PIPELINE_BREAKER_PAUSED),
            stalled: level(telemetry::PIPELINE_STALLED),
            partial_windows: level(telemetry::PIPELINE_PARTIAL_WINDOWS),
            late: count(telemetry::PIPELINE_LATE),
            windows_emitted: count(telemetry::PIPELINE_WINDOWS_EMITTED),
            open_windows: level(telemetry::PIPELINE_OPEN_WINDOWS),
            window_state_bytes: level(telemetry::PIPELINE_WINDOW_STATE_BYTES),
            checkpoints: count(telemetry::PIPELINE_CHECKPOINTS),
            checkpoint_bytes: level(telemetry::PIPELINE_CHECKPOINT_BYTES),
            watermark: level(telemetry::PIPELINE_WATERMARK),
            transactions_committed: count(telemetry::PIPELINE_TXN_COMMITTED),
            transactions_aborted: count(telemetry::PIPELINE_TXN_ABORTED),
            condition: parking_lot::Mutex::new(None),
            partitions: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The consumer lag, or -1 when unknown.
    pub fn get_lag(&self) -> i64 {
        self.lag.get()
    }

    /// What holds the pipeline up, if anything.
    pub fn condition(&self) -> Option<String> {
        self.condition.lock().clone()
    }

    pub(super) fn set_condition(&self, condition: Option<String>) {
        *self.condition.lock() = condition;
    }

    /// The partitions the pipeline read at the last micro-batch boundary.
    pub fn partitions(&self) -> Vec<String> {
        self.partitions.lock().clone()
    }
}

impl crate::transaction::TxnCounts for PipelineStats {
    fn committed(&self) {
        self.transactions_committed.add(1);
    }

    fn aborted(&self) {
        self.transactions_aborted.add(1);
    }
}
