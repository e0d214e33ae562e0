// The JavaScript side of benches/languages.rs: the same logic as the Rust
// (udfs/examples/geo `gcd`, udfs/examples/text `shout`) and AssemblyScript
// (udfs/as/examples `as_gcd`, `as_upper`) functions it is compared with.

// @udf js_gcd(a BIGINT, b BIGINT) RETURNS BIGINT
function js_gcd(a, b) {
  a = Math.abs(a);
  b = Math.abs(b);
  while (b !== 0) {
    const t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// @udf js_upper(s VARCHAR) RETURNS VARCHAR
function js_upper(s) {
  return s.toUpperCase();
}

// @udf js_add(a BIGINT, b BIGINT) RETURNS BIGINT
function js_add(a, b) {
  return a + b;
}
