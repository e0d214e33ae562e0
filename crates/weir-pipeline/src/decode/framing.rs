//! How many records a payload holds, found by a cheap scan before the Arrow
//! decoders run: a payload must hold exactly one complete record, so that
//! every decoded row is attributed to its own source record (its key,
//! offset, headers) and payloads that split or merge records cannot pass as
//! the right number of rows.

/// What a scan found in one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    One,
    Several,
    /// Ends inside a string, a quoted field or an open bracket.
    Incomplete,
}

/// Top-level JSON values in a payload.
pub fn json(payload: &[u8]) -> Framing {
    let mut values = 0;
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut in_scalar = false;
    for &b in payload {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        let structural = matches!(b, b'{' | b'}' | b'[' | b']' | b'"' | b',' | b':');
        if b.is_ascii_whitespace() || structural {
            in_scalar = false;
        }
        match b {
            b'"' => {
                if depth == 0 {
                    values += 1;
                }
                in_string = true;
            }
            b'{' | b'[' => {
                if depth == 0 {
                    values += 1;
                }
                depth += 1;
            }
            b'}' | b']' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                // A closing bracket with nothing open.
                None => return Framing::Incomplete,
            },
            _ if b.is_ascii_whitespace() || structural => {}
            _ => {
                // A bare number or literal at the top level.
                if depth == 0 && !in_scalar {
                    values += 1;
                }
                in_scalar = true;
            }
        }
        if values > 1 {
            return Framing::Several;
        }
    }
    match (values, in_string || depth > 0) {
        (_, true) => Framing::Incomplete,
        (0, _) => Framing::Empty,
        _ => Framing::One,
    }
}

/// CSV lines in a payload, with csv-core's quoting: a quote opens a quoted
/// field only at the start of a field, `""` inside one is a quote.
pub fn csv(payload: &[u8]) -> Framing {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A quote inside a quoted field: its end, or the first of `""`.
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut rows = 0;
    let mut line_has_content = false;
    for &b in payload {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::FieldStart, b'"') => {
                line_has_content = true;
                State::Quoted
            }
            (_, b'\n' | b'\r') => {
                if line_has_content {
                    rows += 1;
                }
                line_has_content = false;
                State::FieldStart
            }
            (_, b',') => {
                line_has_content = true;
                State::FieldStart
            }
            (_, b) => {
                line_has_content |= !b.is_ascii_whitespace();
                State::Unquoted
            }
        };
        if rows > 1 {
            return Framing::Several;
        }
    }
    if state == State::Quoted {
        return Framing::Incomplete;
    }
    match rows + usize::from(line_has_content) {
        0 => Framing::Empty,
        1 => Framing::One,
        _ => Framing::Several,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_counts_top_level_values() {
        assert_eq!(json(br#"{"a": 1}"#), Framing::One);
        assert_eq!(
            json(br#"  {"a": "}{\"", "b": [1, {"c": 2}]}  "#),
            Framing::One
        );
        assert_eq!(json(br#"{"a": 1}{"a": 2}"#), Framing::Several);
        assert_eq!(json(b"{\"a\": 1}\n{\"a\": 2}"), Framing::Several);
        assert_eq!(json(b"   "), Framing::Empty);
        assert_eq!(json(b""), Framing::Empty);
        assert_eq!(json(b"42"), Framing::One);
        assert_eq!(json(b"1 2"), Framing::Several);
        assert_eq!(json(br#""x" {}"#), Framing::Several);
        assert_eq!(json(br#"{"a": "x"#), Framing::Incomplete);
        assert_eq!(json(br#"{"a": [1"#), Framing::Incomplete);
        assert_eq!(json(b"]}"), Framing::Incomplete);
    }

    #[test]
    fn csv_counts_lines_outside_quoted_fields() {
        assert_eq!(csv(b"1,abc"), Framing::One);
        assert_eq!(csv(b"1,\"a\nb\""), Framing::One);
        assert_eq!(csv(b"1,\"say \"\"hi\"\"\n\""), Framing::One);
        assert_eq!(csv(b"1,a\n2,b"), Framing::Several);
        assert_eq!(csv(b"1,a\r\n"), Framing::One);
        assert_eq!(csv(b"\n\n"), Framing::Empty);
        // A quote inside an unquoted field is an ordinary character…
        assert_eq!(csv(b"x\"y,1\nz,2"), Framing::Several);
        assert_eq!(csv(b"def\""), Framing::One);
        // … and a quoted field left open is incomplete.
        assert_eq!(csv(b"1,\"abc"), Framing::Incomplete);
    }
}
