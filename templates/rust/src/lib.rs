//! `{{name}}`: weir UDFs. Each `#[weir_udf::scalar]` function becomes a SQL
//! function; weir calls it once per batch. NULL in → NULL out unless an
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_plus_one() {
        assert_eq!({{name}}(20), 41);
    }

    #[test]
    fn zero_divisor_is_an_error() {
        assert!({{name}}_ratio(1.0, 0.0).is_err());
    }
}
