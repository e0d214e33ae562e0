// AssemblyScript UDFs (docs/udf-guide.md): one function per row, declared
// for SQL by its `// @udf` line. Built by `weir udf build udfs/as/examples`.
import { fail, nullResult } from "./weir";

// @udf as_add(a BIGINT, b BIGINT) RETURNS BIGINT
export function as_add(a: i64, b: i64): i64 {
  return a + b;
}

// @udf as_gcd(a BIGINT, b BIGINT) RETURNS BIGINT
export function as_gcd(a: i64, b: i64): i64 {
  a = a < 0 ? -a : a;
  b = b < 0 ? -b : b;
  while (b != 0) {
    const t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// @udf as_upper(s VARCHAR) RETURNS VARCHAR
export function as_upper(s: string): string {
  return s.toUpperCase();
}

// @udf as_initials(s VARCHAR) RETURNS VARCHAR
export function as_initials(s: string): string {
  let out = "";
  const words = s.split(" ");
  for (let i = 0; i < words.length; i++) {
    if (words[i].length > 0) out += words[i].charAt(0).toUpperCase() + ".";
  }
  return out;
}

// "12.34 EUR" -> 1234; anything else fails the row.
// @udf as_parse_cents(s VARCHAR) RETURNS BIGINT
export function as_parse_cents(s: string): i64 {
  const space = s.indexOf(" ");
  const number = space < 0 ? s : s.substring(0, space);
  const dot = number.indexOf(".");
  const whole = dot < 0 ? number : number.substring(0, dot);
  const frac = dot < 0 ? "0" : number.substring(dot + 1);
  if (!digits(whole) || !digits(frac) || frac.length > 2) {
    return fail<i64>("`" + s + "` is not an amount like `12.34 EUR`");
  }
  const cents = frac.length == 1 ? I64.parseInt(frac) * 10 : I64.parseInt(frac);
  return I64.parseInt(whole) * 100 + cents;
}

function digits(s: string): bool {
  if (s.length == 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

// NULL for an empty string.
// @udf as_nonempty(s VARCHAR) RETURNS VARCHAR
export function as_nonempty(s: string): string | null {
  return s.length == 0 ? null : s;
}

// NULL for negative numbers.
// @udf as_sqrt(x DOUBLE) RETURNS DOUBLE
export function as_sqrt(x: f64): f64 {
  if (x < 0) return nullResult<f64>();
  return Math.sqrt(x);
}

// Every scalar type of the ABI in, one text out.
// @udf as_types(b BOOLEAN, i1 TINYINT, i2 SMALLINT, i4 INT, i8 BIGINT, u1 TINYINT UNSIGNED, u2 SMALLINT UNSIGNED, u4 INT UNSIGNED, u8 BIGINT UNSIGNED, f4 REAL, f8 DOUBLE, s VARCHAR, t TIMESTAMP, d DATE) RETURNS VARCHAR
export function as_types(b: bool, i1: i8, i2: i16, i4: i32, i8: i64, u1: u8, u2: u16, u4: u32, u8: u64, f4: f32, f8: f64, s: string, t: i64, d: i32): string {
  return [
    b ? "true" : "false", i1.toString(), i2.toString(), i4.toString(), i8.toString(),
    u1.toString(), u2.toString(), u4.toString(), u8.toString(), f4.toString(), f8.toString(),
    s, t.toString(), d.toString(),
  ].join("|");
}

// @udf as_not(b BOOLEAN) RETURNS BOOLEAN
export function as_not(b: bool): bool {
  return !b;
}

// @udf as_tiny(x TINYINT) RETURNS TINYINT
export function as_tiny(x: i8): i8 {
  return x * 2;
}

// @udf as_half(x REAL) RETURNS REAL
export function as_half(x: f32): f32 {
  return x / 2;
}

// @udf as_next_day(d DATE) RETURNS DATE
export function as_next_day(d: i32): i32 {
  return d + 1;
}

// @udf as_plus_second(t TIMESTAMP) RETURNS TIMESTAMP
export function as_plus_second(t: i64): i64 {
  return t + 1_000_000;
}

// @udf as_bytes(s VARCHAR) RETURNS BYTEA
export function as_bytes(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

// @udf as_len(b BYTEA) RETURNS INT
export function as_len(b: Uint8Array): i32 {
  return b.length;
}

// @udf as_reverse_bytes(b BYTEA) RETURNS BYTEA
export function as_reverse_bytes(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) out[i] = b[b.length - 1 - i];
  return out;
}

// A `throw` traps: the batch fails with the message and the row.
// @udf as_checked(x BIGINT) RETURNS BIGINT
export function as_checked(x: i64): i64 {
  if (x > 2) throw new Error("x is " + x.toString() + ", above 2");
  return x;
}

// A counter across rows and batches: not deterministic.
let calls: i64 = 0;
// @udf as_calls(x BIGINT) RETURNS BIGINT VOLATILE
export function as_calls(x: i64): i64 {
  calls++;
  return calls;
}
