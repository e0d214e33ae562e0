//! Circuit breakers and capacity around a pipeline's batches: holding the
//! pipeline while a UDF's breaker is open, waiting for instance slots.

use super::*;

impl Pipeline {
    /// Whether an open circuit breaker of one of the pipeline's UDFs holds
    /// the source (only with the tenant's `breaker_action = "pause"`).
    pub(super) fn breaker_hold(&self) -> Hold {
        if self.tenant.policy().breaker_action != BreakerAction::Pause {
            return Hold::None;
        }
        let mut hold = Hold::None;
        for (module, i) in self.functions() {
            let Some(breaker) = module.breaker(i) else {
                continue;
            };
            match breaker.open_for(module.breaker_cooldown()) {
                Some(left) if !left.is_zero() => return Hold::Wait,
                Some(_) => hold = Hold::Probe,
                None if breaker.state() == BreakerState::HalfOpen => hold = Hold::Probe,
                None => {}
            }
        }
        hold
    }

    /// Whether no UDF's breaker counts a failure (the breakers of other
    /// pipelines' batches included).
    pub(super) fn breakers_clean(&self) -> bool {
        self.functions()
            .iter()
            .all(|(m, i)| m.breaker(*i).is_none_or(|b| b.is_clean()))
    }

    /// Every function of every module: (module, index in its manifest).
    pub(super) fn functions(&self) -> Vec<(Arc<UdfModule>, usize)> {
        let modules = self.modules.read().clone();
        modules
            .into_iter()
            .flat_map(|m| (0..m.manifest().functions.len()).map(move |i| (m.clone(), i)))
            .collect()
    }

    /// The open breaker that holds the pipeline longest: what to tell the
    /// user and how long is left.
    pub(super) fn open_breaker(&self) -> Option<(String, Duration)> {
        let policy = self.tenant.policy();
        self.functions()
            .into_iter()
            .filter_map(|(m, i)| {
                let b = m.breaker(i)?;
                let left = b.open_for(m.breaker_cooldown())?;
                let udf = &m.manifest().functions[i].name;
                let message = format!(
                    "paused: the circuit breaker of udf `{udf}` ({}) of tenant `{}` is open ({}); \
                     a probe record runs after `breaker_cooldown_ms` = {} ms, or as soon as a new \
                     version is in effect; set `breaker_action = \"dead-letter\"` in the tenant policy \
                     to dead-letter records instead of pausing",
                    m.label(),
                    self.config.tenant,
                    b.reason().unwrap_or_else(|| "failing batches".to_string()),
                    policy.breaker_cooldown_ms,
                );
                Some((message, left))
            })
            .max_by_key(|(_, left)| *left)
    }

    /// Pauses the source until no breaker holds it (its cool-down passed or
    /// a new UDF version is in effect), keeping the consumer in its group
    /// and committing what the sinks acknowledge meanwhile. `false` if the
    /// pipeline was told to stop meanwhile.
    pub(super) async fn wait_out_breaker(
        &mut self,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let Some((message, _)) = self.open_breaker() else {
            return Ok(true);
        };
        tracing::warn!(pipeline = %self.config.name, "{message}");
        self.stats.breaker_paused.set(1);
        self.stats.set_condition(Some(message));
        self.source.pause().await?;
        let result: anyhow::Result<bool> = async {
            loop {
                let Some((_, left)) = self.open_breaker().filter(|(_, left)| !left.is_zero())
                else {
                    return Ok(true);
                };
                flight.commit_acknowledged(&mut *self.source).await?;
                self.source.keepalive().await?;
                tokio::select! {
                    _ = tokio::time::sleep(left.min(BREAKER_POLL)) => {}
                    _ = shutdown.changed() => return Ok(false),
                }
                if self.maybe_reload().await {
                    return Ok(true);
                }
            }
        }
        .await;
        self.source.resume().await?;
        self.stats.breaker_paused.set(0);
        self.stats.set_condition(None);
        if matches!(result, Ok(true)) {
            tracing::info!(pipeline = %self.config.name, "circuit breaker cool-down over or new UDF version: resuming with a probe");
        }
        result
    }

    /// Holds the batch while the sandbox or the tenant has no capacity for
    /// it (`attempt` from 1): the source paused, acknowledged batches
    /// committed, the consumer kept alive; waits 200 ms doubling up to 5 s.
    /// `false` when shut down meanwhile.
    pub(super) async fn wait_for_capacity(
        &mut self,
        why: &str,
        attempt: u32,
        flight: &mut InFlight,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let wait = Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)))
            .min(Duration::from_secs(5));
        if attempt == 1 || attempt.is_power_of_two() {
            tracing::warn!(pipeline = %self.config.name, attempt, "no capacity for the batch, retrying it in {wait:?} (nothing is dead-lettered): {why}");
        }
        self.stats
            .set_condition(Some(format!("waiting for capacity: {why}")));
        self.source.pause().await?;
        flight.commit_acknowledged(&mut *self.source).await?;
        self.source.keepalive().await?;
        let go_on = tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.changed() => false,
        };
        self.source.resume().await?;
        self.stats.set_condition(None);
        Ok(go_on)
    }

    /// One micro-batch's outcome per UDF for the circuit breakers: failing
    /// if the function itself failed on a row of it (trap, out of CPU, …),
    /// succeeding otherwise — row errors are the function working.
    /// Only functions the batch actually called count: a batch that never
    /// reached a UDF (all rows filtered out or undecodable) says nothing of
    /// it. `before` is [`Pipeline::calls_snapshot`] from before the batch.
    pub(super) fn record_breakers(&self, failed: &[crate::isolate::FailedRow], before: &[u64]) {
        let failing: std::collections::HashSet<&str> = failed
            .iter()
            .filter(|f| f.function_failure)
            .filter_map(|f| f.udf.as_deref())
            .collect();
        // Refused by an open breaker, or no capacity to run it: the
        // function did not run (its breaker learns nothing either way).
        let refused: std::collections::HashSet<&str> = failed
            .iter()
            .filter(|f| f.circuit_open || f.capacity)
            .filter_map(|f| f.udf.as_deref())
            .collect();
        let after = self.calls_snapshot();
        let modules = self.modules.read().clone();
        let functions = modules
            .iter()
            .flat_map(|m| m.manifest().functions.iter().map(move |f| (m, f)));
        for (i, (module, f)) in functions.enumerate() {
            let called = after.get(i) != before.get(i);
            let name = f.name.as_str();
            if refused.contains(name) {
                continue;
            }
            if failing.contains(name) {
                module.record_batch(name, false);
            } else if called {
                module.record_batch(name, true);
            }
        }
    }

    /// Calls so far per function of every module (guest calls, calls served
    /// by the cache and calls refused by an open breaker alike): a change
    /// means the batch reached the function.
    pub(super) fn calls_snapshot(&self) -> Vec<u64> {
        self.functions()
            .into_iter()
            .map(|(m, i)| m.calls_made(i))
            .collect()
    }
}

/// What an open circuit breaker asks of the pipeline before the next batch.
pub(super) enum Hold {
    None,
    /// The cool-down passed: run one record as the probe.
    Probe,
    /// Still cooling down: keep the source paused.
    Wait,
}
