//! Memoized results of deterministic functions, per tenant. Vectorized: a
//! batch is looked up row by row, the guest runs once on the misses as one
//! smaller batch, and the results are merged back in order. Whether a
//! function's batch is looked up at all is [`super::CacheAdvice`]'s call.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use moka::sync::Cache;

use crate::telemetry::{self, Count};

/// Counters of one tenant's cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: Count,
    pub misses: Count,
    pub evictions: Count,
    /// Rows of deterministic functions sent straight to the guest because
    /// looking them up did not pay ([`super::CacheAdvice`]).
    pub bypassed: Count,
}

/// Which of `rows` rows are in `failed` (a lookup per row, not a search:
/// dirty batches have hundreds of failed rows).
fn failed_mask(failed: &[usize], rows: usize) -> Vec<bool> {
    let mut bad = vec![false; rows];
    for &row in failed {
        if let Some(b) = bad.get_mut(row) {
            *b = true;
        }
    }
    bad
}

/// Keys: module digest, function index, then the row's argument values in
/// arrow's row format (which encodes nulls and types unambiguously).
pub struct ResultCache {
    cache: Cache<Vec<u8>, ScalarValue, foldhash::fast::RandomState>,
    pub stats: Arc<CacheStats>,
}

impl ResultCache {
    pub fn new(tenant: &str, budget_bytes: u64) -> Self {
        let labels = vec![("tenant", tenant.to_string())];
        let stats = Arc::new(CacheStats {
            hits: Count::new(telemetry::counter(telemetry::CACHE_HITS, &labels)),
            misses: Count::new(telemetry::counter(telemetry::CACHE_MISSES, &labels)),
            evictions: Count::new(telemetry::counter(telemetry::CACHE_EVICTIONS, &labels)),
            bypassed: Count::new(telemetry::counter(telemetry::CACHE_BYPASSED, &labels)),
        });
        let evicted = stats.clone();
        let cache = Cache::builder()
            .max_capacity(budget_bytes)
            // Plain LRU: TinyLFU's admission bookkeeping costs more per
            // insert, and a batch's misses are all worth admitting.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|k: &Vec<u8>, v: &ScalarValue| {
                u32::try_from(k.len() + v.size()).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evicted.evictions.add(1);
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        ResultCache { cache, stats }
    }

    /// Runs `compute` only on the rows of `args` not in the cache (one call
    /// with the misses), and returns the full result in row order.
    ///
    /// `compute` returns its column and the rows of it that failed (NULL
    /// in it, never cached); the answer names those rows as `(row of
    /// args, row of the computed column)`.
    pub fn get_or_compute<E>(
        &self,
        prefix: &[u8],
        args: &[ArrayRef],
        rows: usize,
        compute: impl FnOnce(&[ArrayRef], usize) -> Result<(ArrayRef, Vec<usize>), E>,
        internal: impl Fn(String) -> E,
        remap_row: impl FnOnce(E, &dyn Fn(usize) -> usize) -> E,
    ) -> Result<(ArrayRef, Vec<(usize, usize)>), E> {
        let identity = |(out, failed): (ArrayRef, Vec<usize>)| {
            let failed = failed.into_iter().map(|r| (r, r)).collect();
            (out, failed)
        };
        if args.is_empty() {
            // Nothing to key on (a constant function): no caching.
            return compute(args, rows).map(identity);
        }
        let fields = args
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let keyed = RowConverter::new(fields)
            .and_then(|c| c.convert_columns(args))
            .map_err(|e| internal(e.to_string()));
        let Ok(encoded) = keyed else {
            // A type the row format cannot encode: no caching.
            return compute(args, rows).map(identity);
        };
        let mut keys = Vec::with_capacity(rows);
        let mut hits: Vec<(usize, ScalarValue)> = Vec::new();
        let mut misses: Vec<u32> = Vec::new();
        for (i, row) in encoded.iter().enumerate() {
            let mut key = Vec::with_capacity(prefix.len() + row.as_ref().len());
            key.extend_from_slice(prefix);
            key.extend_from_slice(row.as_ref());
            match self.cache.get(&key) {
                Some(v) => hits.push((i, v)),
                None => misses.push(i as u32),
            }
            keys.push(key);
        }
        self.stats.hits.add(hits.len() as u64);
        self.stats.misses.add(misses.len() as u64);
        if hits.is_empty() {
            let (out, failed) = compute(args, rows)?;
            let bad = failed_mask(&failed, rows);
            let stored = (0..rows).filter(|i| !bad[*i]).map(|i| (i, i));
            self.store(&mut keys, &out, stored, &internal)?;
            return Ok(identity((out, failed)));
        }
        let hit_values = ScalarValue::iter_to_array(hits.iter().map(|(_, v)| v.clone()))
            .map_err(|e| internal(e.to_string()))?;
        if misses.is_empty() {
            return Ok((hit_values, Vec::new()));
        }
        let indices = UInt32Array::from(misses.clone());
        let miss_args = args
            .iter()
            .map(|a| take(a.as_ref(), &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(e.to_string()))?;
        // An error naming a row of the misses names it in `args` instead.
        let (computed, failed) = compute(&miss_args, misses.len())
            .map_err(|e| remap_row(e, &|row| misses.get(row).map_or(row, |&i| i as usize)))?;
        let bad = failed_mask(&failed, misses.len());
        self.store(
            &mut keys,
            &computed,
            misses
                .iter()
                .enumerate()
                .filter(|(j, _)| !bad[*j])
                .map(|(j, &i)| (i as usize, j)),
            &internal,
        )?;
        let failed: Vec<(usize, usize)> = failed
            .into_iter()
            .filter_map(|j| misses.get(j).map(|&i| (i as usize, j)))
            .collect();
        // Merge: (source, index) per row, source 0 = computed, 1 = hits.
        let mut order = Vec::with_capacity(rows);
        let (mut h, mut m) = (0, 0);
        for i in 0..rows {
            if h < hits.len() && hits[h].0 == i {
                order.push((1, h));
                h += 1;
            } else {
                order.push((0, m));
                m += 1;
            }
        }
        interleave(&[computed.as_ref(), hit_values.as_ref()], &order)
            .map(|out| (out, failed))
            .map_err(|e| internal(e.to_string()))
    }

    fn store<E>(
        &self,
        keys: &mut [Vec<u8>],
        out: &ArrayRef,
        rows: impl Iterator<Item = (usize, usize)>,
        internal: &impl Fn(String) -> E,
    ) -> Result<(), E> {
        for (row, at) in rows {
            let value =
                ScalarValue::try_from_array(out, at).map_err(|e| internal(e.to_string()))?;
            self.cache.insert(std::mem::take(&mut keys[row]), value);
        }
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}
