//! Tenant features under load. Results: BENCHMARKS.md.
//!
//! - `cache/*` (criterion): an expensive deterministic UDF (`work`, 10 000
//!   LCG rounds per row) on 8192-row batches, uncached and cached at 0 % and
//!   90 % repeated inputs.
//! - the noisy-neighbour run (printed table, after criterion): tenant B calls
//!   a cheap UDF on its own thread, alone and then next to tenant A running
//!   an infinite loop, a memory bomb, or a legitimate CPU-heavy UDF as fast
//!   as it can on two threads. B's throughput is measured flat out (it can
//!   lose to A), its p50/p99 call latency at a fixed 200 batches/s; both are
//!   compared with its solo run.
//!
//! Run: `cargo bench --bench tenants` (`-- cache` or `-- noisy` for one part)

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use datafusion::arrow::array::{ArrayRef, Int64Array};
use weir::tenant::{Policy, Tenants};
use weir::{Sandbox, SandboxLimits, SandboxOptions, UdfModule};

const ROWS: usize = 8192;

fn guest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tenant/guest.wat")
}

fn sandbox() -> Sandbox {
    Sandbox::with_options(SandboxOptions {
        limits: SandboxLimits::default(),
        cache_dir: None,
    })
    .unwrap()
}

fn tenants(policy: &str) -> Tenants {
    Tenants::new(Policy::from_toml(policy).unwrap())
}

/// `ROWS` values of which `repeat` (0..1) are drawn from a small pool that
/// the cache has seen; the rest are new each call.
fn inputs(repeat: f64, fresh: &mut i64) -> ArrayRef {
    let values: Vec<i64> = (0..ROWS)
        .map(|i| {
            if (i as f64) < repeat * ROWS as f64 {
                (i % 64) as i64
            } else {
                *fresh += 1;
                1_000_000 + *fresh
            }
        })
        .collect();
    Arc::new(Int64Array::from(values))
}

fn cache(c: &mut Criterion) {
    let sandbox = sandbox();
    let t = tenants("[tenants.off]\ncache_bytes = 0\n[tenants.on]\ncache_bytes = 268435456\n");
    let off = sandbox.load_file_for(guest(), &t.get("off")).unwrap();
    let on = sandbox.load_file_for(guest(), &t.get("on")).unwrap();
    let work = off.function_index("work").unwrap();
    let mut g = c.benchmark_group("cache");
    g.sample_size(20);
    let mut fresh = 0;
    for (name, module, repeat) in [
        ("uncached", &off, 0.0),
        ("cached_0pct_repeats", &on, 0.0),
        ("cached_90pct_repeats", &on, 0.9),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || inputs(repeat, &mut fresh),
                |arg| black_box(module.call(work, &[arg], ROWS).unwrap()),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, cache);

/// B's calls of `double` on 4096 rows for `secs`: `rate` batches/s, or as
/// fast as it can (`None`); returns (batches/s achieved, p50, p99 call
/// latency).
fn tenant_b(module: &UdfModule, rate: Option<f64>, secs: f64) -> (f64, Duration, Duration) {
    let f = module.function_index("double").unwrap();
    let arg: ArrayRef = Arc::new(Int64Array::from_iter_values(0..4096));
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let t = Instant::now();
        black_box(module.call(f, std::slice::from_ref(&arg), 4096).unwrap());
        latencies.push(t.elapsed());
        i += 1;
    }
    latencies.sort();
    let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    (
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
        at(50),
        at(99),
    )
}

fn noisy_neighbour() {
    let sandbox = sandbox();
    let t = tenants(
        "[tenants.a]\nmax_concurrent_calls = 1\ncpu_ms_per_batch = 100\nmemory_bytes = 33554432\nmemory_total_bytes = 67108864\ncache_bytes = 0\n[tenants.b]\ncache_bytes = 0\n",
    );
    let b = sandbox.load_file_for(guest(), &t.get("b")).unwrap();
    let a = sandbox.load_file_for(guest(), &t.get("a")).unwrap();
    // Latency is measured under a fixed load (a fraction of a core), and
    // throughput flat out.
    let rate = 200.0;
    let secs = 5.0;
    let (solo_max, _, _) = tenant_b(&b, None, secs);
    let (_, solo_p50, solo_p99) = tenant_b(&b, Some(rate), secs);
    println!(
        "noisy neighbour: tenant B calls `double` on 4096 rows: flat out, and at {rate} batches/s, {secs} s each"
    );
    println!("| A runs | B batches/s flat out | vs solo | B p50 / p99 at {rate}/s | p99 vs solo |");
    println!("|---|---|---|---|---|");
    println!("| nothing (solo) | {solo_max:.0} | 100 % | {solo_p50:?} / {solo_p99:?} | 1.00× |");
    let cases: [(&str, &str, i64); 3] = [
        (
            "an infinite loop (`spin` 10^12, killed at 100 ms)",
            "spin",
            1_000_000_000_000,
        ),
        ("a memory bomb (`grow` 512 pages per call)", "grow", 512),
        ("a legitimate CPU-heavy UDF (`work`), flat out", "work", 0),
    ];
    for (label, func, value) in cases {
        let stop = Arc::new(AtomicBool::new(false));
        let f = a.function_index(func).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|k| {
                let (a, stop) = (a.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = k as i64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 2;
                        let v = if value == 0 { n } else { value };
                        let arg: ArrayRef = Arc::new(Int64Array::from(vec![v; 64]));
                        let _ = black_box(a.call(f, &[arg], 64));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (max, _, _) = tenant_b(&b, None, secs);
        let (_, p50, p99) = tenant_b(&b, Some(rate), secs);
        stop.store(true, Ordering::Relaxed);
        for th in threads {
            let _ = th.join();
        }
        println!(
            "| {label} | {max:.0} | {:.0} % | {p50:?} / {p99:?} | {:.2}× |",
            100.0 * max / solo_max,
            p99.as_secs_f64() / solo_p99.as_secs_f64()
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Under `cargo bench` (not `cargo test --benches`), unfiltered or
    // filtered to `noisy`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| a == "--profile-time")
        && (filters.is_empty() || filters.iter().any(|f| f.as_str() == "noisy"))
    {
        noisy_neighbour();
    }
}
