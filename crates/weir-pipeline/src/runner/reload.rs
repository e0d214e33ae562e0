//! Hot reload: new UDF versions and new lookup-table versions, planned
//! again between batches.

use super::*;

impl Pipeline {
    /// Between batches: if told that UDF versions may have changed, resolve
    /// them again and re-plan. A failure keeps the running versions. `true`
    /// when new versions are in effect.
    pub(super) async fn maybe_reload(&mut self) -> bool {
        let Some(reload) = &mut self.reload else {
            return false;
        };
        if !reload.changed.has_changed().unwrap_or(false) {
            return false;
        }
        reload.changed.borrow_and_update();
        let modules = match (reload.resolve)() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "UDF reload failed, keeping the running versions: {e:#}");
                return false;
            }
        };
        let current = self.modules.read().clone();
        let same = modules.len() == current.len()
            && modules
                .iter()
                .zip(&current)
                .all(|(a, b)| a.digest() == b.digest());
        if same {
            return false;
        }
        match self.replan(&modules).await {
            Ok(()) => {
                let labels: Vec<&str> = modules.iter().map(|m| m.label()).collect();
                tracing::info!(pipeline = %self.config.name, modules = ?labels, "new UDF versions in effect from this batch");
                for m in &modules {
                    m.bind_metrics(&self.config.name);
                }
                *self.modules.write() = modules;
                true
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.config.name, "new UDF versions not applied, keeping the running ones: {e:#}");
                false
            }
        }
    }

    /// Plans the query (and every worker's) again with `modules` and the
    /// tables in force; the plans in force stay if that fails.
    pub(super) async fn replan(&mut self, modules: &[Arc<UdfModule>]) -> anyhow::Result<()> {
        let modules = &[modules, self.inline.as_slice()].concat()[..];
        let query = Self::plan(
            &self.config,
            modules,
            self.query_schema(),
            &self.tenant,
            &self.tables,
        )
        .await?;
        if query.window() != self.query.window() {
            anyhow::bail!("the new versions change the query's window");
        }
        let stages = match &self.stages {
            Some(running) => {
                let (split, aggregation) = folding(&query).map_err(|why| {
                    anyhow::anyhow!("the open windows fold their rows, and with the new versions they could not: {why}")
                })?;
                if aggregation.output()
                    != datafusion::physical_plan::ExecutionPlan::schema(running.aggregate.as_ref())
                    || split.below.output_schema() != running.below.output_schema()
                {
                    anyhow::bail!("the new versions change the query's aggregate");
                }
                Some(Arc::new(split))
            }
            None => None,
        };
        self.encoder
            .check_schema(&query.output_schema())
            .map_err(anyhow::Error::msg)?;
        if let Some(count) = self.workers.as_ref().map(Workers::count) {
            let queries = Self::plan_workers(
                &self.config,
                modules,
                self.query_schema(),
                &self.tenant,
                &self.tables,
                count,
            )
            .await?;
            if let Some(w) = &mut self.workers {
                w.replace(queries);
            }
        }
        self.query = query;
        self.stages = stages;
        Ok(())
    }

    /// Between batches: takes new versions of the lookup tables (a file
    /// rewritten, values on a topic) and plans the query again with them.
    pub(super) async fn refresh_tables(&mut self) {
        if self.tables.is_empty() {
            return;
        }
        let (limit, key) = {
            let policy = self.tenant.policy();
            (policy.state_bytes, policy.key("state_bytes"))
        };
        if !self.tables.refresh(&self.config.name, (limit, &key)).await {
            return;
        }
        let modules = self.modules.read().clone();
        if let Err(e) = self.replan(&modules).await {
            tracing::warn!(pipeline = %self.config.name, "new table versions not applied: {e:#}");
        }
    }
}
