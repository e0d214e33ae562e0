//! Aggregate functions in WebAssembly (`#[weir_udf::aggregate]`): each
//! accumulator's groups live in the guest between calls; one call per batch.
//!
//! * `wsum(x)`: a plain sum (the sum-like benchmark), with `retract`.
//! * `mean(x)`: the average, with `retract` for sliding windows.
//! * `median(x)`: the exact median (state: every value of the group).
//! * `ema(ts, x, half_life_s)`: a time-decayed exponential moving average
//!   as of the group's latest timestamp: each value weighs
//!   `2^-(latest - ts) / half_life`. Order-independent, so mergeable.
//! * `top3(x)`: the three largest values, as a JSON array, largest first.

use weir_udf::Timestamp;

/// A plain sum of the non-NULL values.
#[derive(Default)]
pub struct Wsum {
    sum: f64,
    count: u64,
}
weir_udf::state!(Wsum { sum, count });

#[weir_udf::aggregate]
impl Wsum {
    fn update(&mut self, x: f64) {
        self.sum += x;
        self.count += 1;
    }
    fn retract(&mut self, x: f64) {
        self.sum -= x;
        self.count -= 1;
    }
    fn merge(&mut self, other: Self) {
        self.sum += other.sum;
        self.count += other.count;
    }
    fn finish(&self) -> Option<f64> {
        (self.count > 0).then_some(self.sum)
    }
}

/// The average of the non-NULL values.
#[derive(Default)]
pub struct Mean {
    sum: f64,
    count: u64,
}
weir_udf::state!(Mean { sum, count });

#[weir_udf::aggregate]
impl Mean {
    fn update(&mut self, x: f64) {
        self.sum += x;
        self.count += 1;
    }
    fn retract(&mut self, x: f64) {
        self.sum -= x;
        self.count = self.count.saturating_sub(1);
    }
    fn merge(&mut self, other: Self) {
        self.sum += other.sum;
        self.count += other.count;
    }
    fn finish(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The exact median: the mean of the two middle values for an even count.
#[derive(Default)]
pub struct Median {
    values: Vec<f64>,
}
weir_udf::state!(Median { values });

#[weir_udf::aggregate]
impl Median {
    fn update(&mut self, x: f64) -> Result<(), String> {
        if x.is_nan() {
            return Err("median of NaN is undefined; filter NaN out first".to_string());
        }
        self.values.push(x);
        Ok(())
    }
    fn merge(&mut self, other: Self) {
        self.values.extend(other.values);
    }
    fn finish(&self) -> Option<f64> {
        let n = self.values.len();
        if n == 0 {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_unstable_by(f64::total_cmp);
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

/// A time-decayed moving average, kept relative to the latest timestamp
/// seen: `sum = Σ x·w`, `weight = Σ w`, `w = 2^-((latest - ts) / half_life)`.
#[derive(Default)]
pub struct Ema {
    latest: Option<i64>,
    sum: f64,
    weight: f64,
    half_life_us: f64,
}
weir_udf::state!(Ema { latest, sum, weight, half_life_us });

impl Ema {
    /// Adds `(sum, weight)` observed as of `at` to the state.
    fn add(&mut self, at: i64, sum: f64, weight: f64) {
        let decay = |from: i64, to: i64, h: f64| (-((to - from) as f64) / h).exp2();
        match self.latest {
            Some(latest) if at <= latest => {
                let d = decay(at, latest, self.half_life_us);
                self.sum += sum * d;
                self.weight += weight * d;
            }
            Some(latest) => {
                let d = decay(latest, at, self.half_life_us);
                self.sum = self.sum * d + sum;
                self.weight = self.weight * d + weight;
                self.latest = Some(at);
            }
            None => {
                self.sum = sum;
                self.weight = weight;
                self.latest = Some(at);
            }
        }
    }
}

#[weir_udf::aggregate]
impl Ema {
    fn update(&mut self, ts: Timestamp, x: f64, half_life_s: f64) -> Result<(), String> {
        if !(half_life_s > 0.0) {
            return Err(format!("ema: half_life_s must be positive, got {half_life_s}"));
        }
        self.half_life_us = half_life_s * 1e6;
        self.add(ts.0, x, 1.0);
        Ok(())
    }
    fn merge(&mut self, other: Self) {
        if let Some(at) = other.latest {
            if self.half_life_us == 0.0 {
                self.half_life_us = other.half_life_us;
            }
            self.add(at, other.sum, other.weight);
        }
    }
    fn finish(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }
}

/// The three largest values, largest first.
#[derive(Default)]
pub struct Top3 {
    best: Vec<f64>,
}
weir_udf::state!(Top3 { best });

impl Top3 {
    fn push(&mut self, x: f64) {
        self.best.push(x);
        self.best.sort_unstable_by(|a, b| b.total_cmp(a));
        self.best.truncate(3);
    }
}

#[weir_udf::aggregate]
impl Top3 {
    fn update(&mut self, x: f64) {
        self.push(x);
    }
    fn merge(&mut self, other: Self) {
        for x in other.best {
            self.push(x);
        }
    }
    fn finish(&self) -> Option<String> {
        if self.best.is_empty() {
            return None;
        }
        let items: Vec<String> = self.best.iter().map(|x| format!("{x}")).collect();
        Some(format!("[{}]", items.join(",")))
    }
}
