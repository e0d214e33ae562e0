//! What a join of the stream with itself asked for ([`JoinSpec`]): the
//! event-time bound its `ON` clause puts between the two sides, read from
//! the planned query. Without a bound a stream-stream join would keep
//! every record forever (or, evaluated per micro-batch, give pairs that
//! depend on how records fall into batches), so it is refused.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

/// Whether `sql` reads the stream more than once (`FROM source a JOIN
/// source b`): the pipeline then keeps rows across micro-batches. Read off
/// the tokens (`source` after FROM, JOIN or a comma), without planning.
pub fn joins_the_stream(sql: &str) -> bool {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return false;
    };
    let words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let reads = words
        .windows(2)
        .filter(|w| {
            let before = match w[0] {
                Token::Word(k) => {
                    k.value.eq_ignore_ascii_case("from") || k.value.eq_ignore_ascii_case("join")
                }
                Token::Comma => true,
                _ => false,
            };
            before && matches!(w[1], Token::Word(s) if s.value.eq_ignore_ascii_case("source"))
        })
        .count();
    reads > 1
}

/// An interval join: rows of the two sides pair only when their event times
/// (`time_column` of each) are at most `reach_us` apart, so a row is kept
/// until the watermark is `reach_us` past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSpec {
    pub time_column: String,
    /// Bounds on `right.time - left.time`, in microseconds.
    pub lower_us: i64,
    pub upper_us: i64,
}

impl JoinSpec {
    /// How far apart in event time two rows that pair can be.
    pub fn reach_us(&self) -> i64 {
        self.upper_us.max(self.lower_us.saturating_neg()).max(0)
    }
}

pub(crate) fn reads_source(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name.table() == "source"
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// `column`, `column + interval` or `column - interval`: the column and
/// the offset in microseconds.
fn shifted(e: &Expr) -> Option<(Column, i64)> {
    match e {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::Cast(c) => shifted(&c.expr),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, base) = shifted(left)?;
            let us = interval_us(right)?;
            match op {
                Operator::Plus => Some((column, base.checked_add(us)?)),
                Operator::Minus => Some((column, base.checked_sub(us)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn interval_us(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            i64::from(v.days)
                .checked_mul(86_400_000_000)?
                .checked_add(v.nanoseconds / 1_000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => i64::from(v.days)
            .checked_mul(86_400_000_000)?
            .checked_add(i64::from(v.milliseconds) * 1_000),
        _ => None,
    }
}

/// Bounds on `right.t - left.t` that one conjunct of the join condition
/// sets: (lower, upper, the time column).
fn bounds(
    e: &Expr,
    left: &LogicalPlan,
    right: &LogicalPlan,
) -> Vec<(Option<i64>, Option<i64>, String)> {
    let compare =
        |a: &Expr, op: Operator, b: &Expr| -> Option<(Option<i64>, Option<i64>, String)> {
            let ((ca, oa), (cb, ob)) = (shifted(a)?, shifted(b)?);
            if ca.name != cb.name {
                return None;
            }
            // Event time: a timestamp column (an equality of keys bounds
            // nothing).
            let is_time = |c: &Column, plan: &LogicalPlan| {
                plan.schema().field_from_column(c).is_ok_and(|f| {
                    matches!(
                        f.data_type(),
                        datafusion::arrow::datatypes::DataType::Timestamp(..)
                    )
                })
            };
            if !(is_time(&ca, left) || is_time(&ca, right)) {
                return None;
            }
            let side = |c: &Column| (left.schema().has_column(c), right.schema().has_column(c));
            // `a op b` with a = L + oa, b = R + ob, as a bound on d = R - L.
            let (d, flipped) = match (side(&ca), side(&cb)) {
                ((true, false), (false, true)) => (oa.checked_sub(ob)?, false),
                ((false, true), (true, false)) => (ob.checked_sub(oa)?, true),
                _ => return None,
            };
            let name = ca.name.clone();
            // L + oa <= R + ob  ⇔  d >= oa - ob; with the sides swapped,
            // R + oa <= L + ob  ⇔  d <= ob - oa.
            Some(match (op, flipped) {
                (Operator::LtEq | Operator::Lt, false) | (Operator::GtEq | Operator::Gt, true) => {
                    (Some(d), None, name)
                }
                (Operator::GtEq | Operator::Gt, false) | (Operator::LtEq | Operator::Lt, true) => {
                    (None, Some(d), name)
                }
                (Operator::Eq, _) => (Some(d), Some(d), name),
                _ => return None,
            })
        };
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op,
            right: b,
        }) => compare(a, *op, b).into_iter().collect(),
        Expr::Between(between) if !between.negated => [
            compare(&between.expr, Operator::GtEq, &between.low),
            compare(&between.expr, Operator::LtEq, &between.high),
        ]
        .into_iter()
        .flatten()
        .collect(),
        _ => Vec::new(),
    }
}

/// The alias (qualifier) of one side's rows, for an example in an error.
fn alias(plan: &LogicalPlan, fallback: &str) -> String {
    plan.schema()
        .iter()
        .find_map(|(q, _)| q.map(|q| q.table().to_string()))
        .unwrap_or_else(|| fallback.to_string())
}

/// The join of the stream with itself in `plan` (an optimized plan), if
/// the query has one; refused when it has no event-time bound, is not an
/// inner join, or there is more than one.
pub fn find(plan: &LogicalPlan) -> Result<Option<JoinSpec>> {
    let mut found: Vec<JoinSpec> = Vec::new();
    let mut error = None;
    plan.apply(|node| {
        let LogicalPlan::Join(join) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        if !(reads_source(&join.left) && reads_source(&join.right)) {
            return Ok(TreeNodeRecursion::Continue);
        }
        let (l, r) = (alias(&join.left, "a"), alias(&join.right, "b"));
        let time = join
            .left
            .schema()
            .fields()
            .iter()
            .find(|f| matches!(f.data_type(), datafusion::arrow::datatypes::DataType::Timestamp(..)))
            .map_or_else(|| "ts".to_string(), |f| f.name().clone());
        let example = format!(
            "`AND {r}.{time} BETWEEN {l}.{time} - INTERVAL '10' SECOND AND {l}.{time} + INTERVAL '10' SECOND`"
        );
        if join.join_type != JoinType::Inner {
            error = Some(format!(
                "the query joins the stream with itself by a {} join; a pipeline runs inner joins of the stream with itself only (an interval join: {example} in the ON clause; docs/pipelines.md, \"Joins of the stream with itself\")",
                join.join_type
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        let mut conjuncts: Vec<Expr> = join
            .on
            .iter()
            .map(|(a, b)| a.clone().eq(b.clone()))
            .collect();
        if let Some(f) = &join.filter {
            conjuncts.extend(split_conjunction(f).into_iter().cloned());
        }
        let (mut lower, mut upper, mut column): (Option<i64>, Option<i64>, Option<String>) =
            (None, None, None);
        for c in &conjuncts {
            for (lo, hi, name) in bounds(c, &join.left, &join.right) {
                if column.as_ref().is_some_and(|n| *n != name) {
                    continue;
                }
                column = Some(name);
                if let Some(lo) = lo {
                    lower = Some(lower.map_or(lo, |x: i64| x.max(lo)));
                }
                if let Some(hi) = hi {
                    upper = Some(upper.map_or(hi, |x: i64| x.min(hi)));
                }
            }
        }
        match (lower, upper, column) {
            (Some(lower_us), Some(upper_us), Some(time_column)) => found.push(JoinSpec {
                time_column,
                lower_us,
                upper_us,
            }),
            _ => {
                error = Some(format!(
                    "the query joins the stream with itself without a bound in event time on both sides, so each record would wait forever for its pairs; add one to the ON clause, e.g. {example} (docs/pipelines.md, \"Joins of the stream with itself\")"
                ));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(e) = error {
        return Err(DataFusionError::Plan(e));
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(DataFusionError::Plan(
            "the query joins the stream with itself more than once; a pipeline runs one join of the stream with itself (docs/pipelines.md, \"Joins of the stream with itself\")".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_reading_the_stream_twice_is_seen_without_planning() {
        assert!(super::joins_the_stream(
            "SELECT * FROM source a JOIN source b ON a.k = b.k"
        ));
        assert!(super::joins_the_stream("SELECT * FROM source a, source b"));
        assert!(!super::joins_the_stream(
            "SELECT source.k FROM source JOIN lookup ON source.k = lookup.k"
        ));
    }
}
