//! How many records a payload holds, found by a cheap scan before the Arrow
//! decoders run: a payload must hold exactly one, so that every decoded row
//! is attributed to its own source record (its key, offset, headers) and a
//! payload with two records beside one with none cannot pass as two rows.

/// Records in a JSON payload: top-level JSON values (0, 1, or 2 = "more").
pub fn json_values(payload: &[u8]) -> usize {
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
            b'}' | b']' => depth = depth.saturating_sub(1),
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
            return 2;
        }
    }
    values
}

/// Records in a CSV payload: lines outside quoted fields (0, 1, or 2 = "more").
pub fn csv_rows(payload: &[u8]) -> usize {
    let mut rows = 0;
    let mut quoted = false;
    let mut line_has_content = false;
    for &b in payload {
        match b {
            b'"' => {
                quoted = !quoted;
                line_has_content = true;
            }
            b'\n' | b'\r' if !quoted => {
                if line_has_content {
                    rows += 1;
                }
                line_has_content = false;
            }
            _ => line_has_content |= !b.is_ascii_whitespace() || quoted,
        }
        if rows > 1 {
            return 2;
        }
    }
    (rows + usize::from(line_has_content)).min(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_counts_top_level_values() {
        assert_eq!(json_values(br#"{"a": 1}"#), 1);
        assert_eq!(json_values(br#"  {"a": "}{\"", "b": [1, {"c": 2}]}  "#), 1);
        assert_eq!(json_values(br#"{"a": 1}{"a": 2}"#), 2);
        assert_eq!(json_values(b"{\"a\": 1}\n{\"a\": 2}"), 2);
        assert_eq!(json_values(b"   "), 0);
        assert_eq!(json_values(b""), 0);
        assert_eq!(json_values(b"42"), 1);
        assert_eq!(json_values(b"1 2"), 2);
        assert_eq!(json_values(br#""x" {}"#), 2);
    }

    #[test]
    fn csv_counts_lines_outside_quotes() {
        assert_eq!(csv_rows(b"1,abc"), 1);
        assert_eq!(csv_rows(b"1,\"a\nb\""), 1);
        assert_eq!(csv_rows(b"1,a\n2,b"), 2);
        assert_eq!(csv_rows(b"1,a\r\n"), 1);
        assert_eq!(csv_rows(b"\n\n"), 0);
    }
}
