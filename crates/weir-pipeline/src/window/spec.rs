//! The window table functions `tumble`, `hop` and `session`: what the query asked for
//! ([`WindowSpec`]), captured while it is planned.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

/// The columns a window table function adds.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`.
    Tumble,
    /// Windows of `size` starting every `slide`; a record is in
    /// `size / slide` of them.
    Hop,
    /// Per key, records closer than the gap (`size_us`) in event time form
    /// one session: `[first, last + gap)`.
    Session,
}

/// A window over event time, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// The event-time column (a timestamp of the source table).
    pub time_column: String,
    pub size_us: i64,
    /// Equal to `size_us` for tumbling windows.
    pub slide_us: i64,
    /// Sessions: the column whose values each have sessions of their own.
    pub key_column: Option<String>,
}

impl WindowSpec {
    /// Starts of the windows holding event time `t`, latest first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last = t.div_euclid(self.slide_us) * self.slide_us;
        (0..)
            .map(move |i| last - i * self.slide_us)
            .take_while(move |s| s + self.size_us > t)
    }
}

/// Where the table functions put what the query asked for.
pub type Captured = Arc<Mutex<Option<WindowSpec>>>;

struct WindowFunction {
    kind: WindowKind,
    /// The source table (its slot) and its schema.
    source: Arc<dyn TableProvider>,
    captured: Captured,
    make: MakeTable,
}

/// Builds the windowed table (same slot as `source`) for a schema.
pub type MakeTable = Arc<dyn Fn(SchemaRef) -> Arc<dyn TableProvider> + Send + Sync>;

/// The schema of a window table function over `source`: its columns, then
/// `window_start` and `window_end`.
pub fn windowed_schema(source: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = source.fields().iter().map(|f| f.as_ref().clone()).collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    fields.push(Field::new(WINDOW_START, ts.clone(), false));
    fields.push(Field::new(WINDOW_END, ts, false));
    Arc::new(Schema::new(fields))
}

fn interval_us(name: &str, what: &str, e: &Expr) -> Result<i64> {
    let micros = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1_000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            Some(i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1_000)
        }
        _ => None,
    };
    match micros {
        Some(us) if us > 0 => Ok(us),
        _ => plan_err!(
            "{name}(): the {what} must be a positive INTERVAL of days or less, like INTERVAL '1' MINUTE (got {e})"
        ),
    }
}

impl std::fmt::Debug for WindowFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowFunction")
            .field("kind", &self.kind)
            .finish()
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = match self.kind {
            WindowKind::Tumble => "tumble",
            WindowKind::Hop => "hop",
            WindowKind::Session => "session",
        };
        let usage = match self.kind {
            WindowKind::Tumble => "tumble(source, <time column>, INTERVAL '<size>')",
            WindowKind::Hop => "hop(source, <time column>, INTERVAL '<slide>', INTERVAL '<size>')",
            WindowKind::Session => {
                "session(source, <time column>, INTERVAL '<gap>'[, <key column>])"
            }
        };
        let exprs = args.exprs();
        let arity_ok = match self.kind {
            WindowKind::Tumble => exprs.len() == 3,
            WindowKind::Hop => exprs.len() == 4,
            WindowKind::Session => exprs.len() == 3 || exprs.len() == 4,
        };
        if !arity_ok {
            return plan_err!("{name}() takes the arguments {usage}");
        }
        match &exprs[0] {
            Expr::Column(c) if c.name == "source" => {}
            other => {
                return plan_err!(
                    "{name}(): the first argument is the table `source`, not {other}; {usage}"
                );
            }
        }
        let Expr::Column(time) = &exprs[1] else {
            return plan_err!("{name}(): the second argument is the event-time column; {usage}");
        };
        let schema = self.source.schema();
        let Ok(field) = schema.field_with_name(&time.name) else {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return plan_err!(
                "{name}(): `{}` is not a column of source ({})",
                time.name,
                names.join(", ")
            );
        };
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return plan_err!(
                "{name}(): the time column `{}` is {}, not a timestamp; declare it with type `timestamp_us`, or use the `_timestamp` metadata column",
                time.name,
                field.data_type()
            );
        }
        let mut key_column = None;
        let (size_us, slide_us) = match self.kind {
            WindowKind::Session => {
                let gap = interval_us(name, "gap", &exprs[2])?;
                if let Some(key) = exprs.get(3) {
                    let Expr::Column(key) = key else {
                        return plan_err!(
                            "session(): the fourth argument is a key column; {usage}"
                        );
                    };
                    if schema.field_with_name(&key.name).is_err() {
                        return plan_err!("session(): `{}` is not a column of source", key.name);
                    }
                    key_column = Some(key.name.clone());
                }
                (gap, gap)
            }
            WindowKind::Tumble => {
                let size = interval_us(name, "size", &exprs[2])?;
                (size, size)
            }
            WindowKind::Hop => {
                let slide = interval_us(name, "slide", &exprs[2])?;
                let size = interval_us(name, "size", &exprs[3])?;
                if size % slide != 0 {
                    return plan_err!("hop(): the size must be a multiple of the slide");
                }
                if size / slide > 1000 {
                    return plan_err!(
                        "hop(): a record may be in at most 1000 windows (size / slide)"
                    );
                }
                (size, slide)
            }
        };
        let spec = WindowSpec {
            kind: self.kind,
            time_column: time.name.clone(),
            size_us,
            slide_us,
            key_column,
        };
        let mut captured = self.captured.lock();
        if captured.as_ref().is_some_and(|c| *c != spec) {
            return plan_err!("a pipeline's query may use one window");
        }
        *captured = Some(spec);
        Ok((self.make)(windowed_schema(&schema)))
    }
}

/// The names of the window table functions (`FROM tumble(source, …)`).
pub const WINDOW_FUNCTIONS: [&str; 3] = ["tumble", "hop", "session"];

/// Whether `sql` reads from a window table function: the pipeline then
/// keeps state (open windows) across micro-batches. Read off the tokens
/// (a name followed by `(`), without planning.
pub fn reads_a_window(sql: &str) -> bool {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return false;
    };
    let mut words = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .peekable();
    while let Some(token) = words.next() {
        if let Token::Word(w) = token
            && WINDOW_FUNCTIONS
                .iter()
                .any(|f| w.value.eq_ignore_ascii_case(f))
            && matches!(words.peek(), Some(Token::LParen))
        {
            return true;
        }
    }
    false
}

/// Registers `tumble`, `hop` and `session` in `ctx` over `source`; `make` builds the
/// windowed table (same slot, schema with the window columns).
pub fn register_window_functions(
    ctx: &SessionContext,
    source: Arc<dyn TableProvider>,
    make: MakeTable,
) -> Captured {
    let captured: Captured = Arc::new(Mutex::new(None));
    for (name, kind) in [
        ("tumble", WindowKind::Tumble),
        ("hop", WindowKind::Hop),
        ("session", WindowKind::Session),
    ] {
        ctx.register_udtf(
            name,
            Arc::new(WindowFunction {
                kind,
                source: source.clone(),
                captured: captured.clone(),
                make: make.clone(),
            }),
        );
    }
    captured
}

#[cfg(test)]
mod tests {

    #[test]
    fn windowed_queries_are_told_from_their_tokens() {
        assert!(super::reads_a_window(
            "SELECT window_start, count(*) FROM TUMBLE (source, ts, INTERVAL '1' MINUTE) GROUP BY 1"
        ));
        assert!(super::reads_a_window(
            "select * from hop(source, ts, interval '1' second, interval '1' minute)"
        ));
        assert!(!super::reads_a_window(
            "SELECT session, hop FROM source -- tumble(x)"
        ));
        assert!(!super::reads_a_window(
            "SELECT 'tumble(source)' AS s FROM source"
        ));
    }
    use super::*;

    #[test]
    fn hopping_windows_hold_each_time_size_over_slide_times() {
        let spec = WindowSpec {
            kind: WindowKind::Hop,
            time_column: "ts".into(),
            size_us: 60,
            slide_us: 20,
            key_column: None,
        };
        assert_eq!(spec.starts(45).collect::<Vec<_>>(), vec![40, 20, 0]);
        assert_eq!(spec.starts(-5).collect::<Vec<_>>(), vec![-20, -40, -60]);
        let tumble = WindowSpec {
            slide_us: 60,
            kind: WindowKind::Tumble,
            ..spec
        };
        assert_eq!(tumble.starts(59).collect::<Vec<_>>(), vec![0]);
        assert_eq!(tumble.starts(60).collect::<Vec<_>>(), vec![60]);
    }
}
