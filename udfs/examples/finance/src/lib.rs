//! A UDF that rejects bad input with an error the user sees, naming the row.

use std::fmt;

#[derive(Debug)]
pub struct BadAmount(String);

impl fmt::Display for BadAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not an amount like `12.34 EUR`", self.0)
    }
}

/// Parses `"12.34 EUR"` into cents: 1234. Errors on anything else.
#[weir_udf::scalar]
fn parse_cents(text: &str) -> Result<i64, BadAmount> {
    let bad = || BadAmount(text.to_string());
    let (number, currency) = text.trim().split_once(' ').ok_or_else(bad)?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(bad());
    }
    let (units, cents) = number.split_once('.').unwrap_or((number, "0"));
    let units: i64 = units.parse().map_err(|_| bad())?;
    let cents: i64 = match cents.len() {
        1 => cents.parse::<i64>().map_err(|_| bad())? * 10,
        2 => cents.parse().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    units
        .checked_mul(100)
        .and_then(|u| u.checked_add(if units < 0 { -cents } else { cents }))
        .ok_or_else(bad)
}

/// Currency code of an amount, NULL when there is none (never an error).
#[weir_udf::scalar]
fn currency(text: &str) -> Option<String> {
    let (_, code) = text.trim().split_once(' ')?;
    (code.len() == 3).then(|| code.to_string())
}
