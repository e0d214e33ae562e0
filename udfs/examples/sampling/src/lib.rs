//! Non-deterministic UDFs: their results depend on state kept across calls,
//! so weir never constant-folds or caches them.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
    static SEQ: Cell<i64> = const { Cell::new(0) };
}

fn next() -> u64 {
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A pseudo-random number in [0, 1).
#[weir_udf::scalar(deterministic = false)]
fn random_unit() -> f64 {
    (next() >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps a row with probability `rate`.
#[weir_udf::scalar(deterministic = false)]
fn sample(rate: f64) -> bool {
    ((next() >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// 1, 2, 3, … across calls of this instance.
#[weir_udf::scalar(deterministic = false)]
fn sequence_number() -> i64 {
    SEQ.with(|s| {
        s.set(s.get() + 1);
        s.get()
    })
}
