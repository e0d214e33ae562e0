//! Numeric UDFs: great-circle distance, gcd, and a linear transform.

/// Great-circle distance between two points in kilometres.
#[weir_udf::scalar]
fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

/// Greatest common divisor (Euclid), non-negative.
#[weir_udf::scalar]
fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

/// `a * 1.5 + b`: the cheapest possible float kernel (benchmarks).
#[weir_udf::scalar]
fn scale_add(a: f64, b: f64) -> f64 {
    a * 1.5 + b
}

/// Explicit NULL handling: the first non-NULL of two values.
#[weir_udf::scalar]
fn first_present(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.or(b)
}
