//! `{{name}}`: weir UDFs. Each `#[weir_udf::scalar]` function becomes a SQL
//! function, each `#[weir_udf::aggregate]` impl an aggregate function;
//! weir calls them once per batch. NULL in → NULL out unless an
//! argument is an `Option`. Return `Result<T, E>` to fail a row with a
//! message. See docs/udf-guide.md.

/// `{{name}}(x)`: x * 2 + 1. Replace with your logic.
#[weir_udf::scalar]
fn {{name}}(x: i64) -> i64 {
    x * 2 + 1
}

/// `{{name}}_ratio(a, b)`: a / b, failing the row when b is zero.
#[weir_udf::scalar]
fn {{name}}_ratio(a: f64, b: f64) -> Result<f64, String> {
    if b == 0.0 {
        return Err(format!("cannot divide {a} by zero"));
    }
    Ok(a / b)
}

/// `{{name}}_spread(x)`: an aggregate, the largest value less the smallest.
/// One value of the struct per group; weir calls `update` once per batch
/// for every row (NULL rows skipped), `merge` to combine partial groups
/// (their state saved with `weir_udf::state!`), `finish` for the result.
#[derive(Default)]
pub struct Spread {
    range: Option<(f64, f64)>,
}
weir_udf::state!(Spread { range });

#[weir_udf::aggregate(name = "{{name}}_spread")]
impl Spread {
    fn update(&mut self, x: f64) {
        self.range = Some(match self.range {
            None => (x, x),
            Some((lo, hi)) => (lo.min(x), hi.max(x)),
        });
    }
    fn merge(&mut self, other: Self) {
        if let Some((lo, hi)) = other.range {
            self.update(lo);
            self.update(hi);
        }
    }
    fn finish(&self) -> Option<f64> {
        self.range.map(|(lo, hi)| hi - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_plus_one() {
        assert_eq!({{name}}(20), 41);
    }

    #[test]
    fn spread_merges_partial_groups() {
        let (mut a, mut b) = (Spread::default(), Spread::default());
        a.update(3.0);
        b.update(-1.0);
        b.update(7.0);
        a.merge(b);
        assert_eq!(a.finish(), Some(8.0));
    }

    #[test]
    fn zero_divisor_is_an_error() {
        assert!({{name}}_ratio(1.0, 0.0).is_err());
    }
}
