// {{name}}: weir UDFs in AssemblyScript (docs/udf-guide.md).
// Each `// @udf` line declares a function SQL may call, with SQL types;
// the function takes and returns AssemblyScript's types for them (BIGINT
// i64, INT i32, DOUBLE f64, VARCHAR string, BOOLEAN bool…) and is called
// once per row. A NULL argument gives NULL without a call. `fail` fails the
// row with a message, `nullResult` returns NULL. No clock, no I/O, no
// Math.random: the module imports nothing.
import { fail } from "./weir";

// @udf {{name}}(x BIGINT) RETURNS BIGINT
export function {{name}}(x: i64): i64 {
  return x * 2 + 1;
}

// @udf {{name}}_title(s VARCHAR) RETURNS VARCHAR
export function {{name}}_title(s: string): string {
  const words = s.split(" ");
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w.length > 0) words[i] = w.charAt(0).toUpperCase() + w.slice(1);
  }
  return words.join(" ");
}

// @udf {{name}}_ratio(a DOUBLE, b DOUBLE) RETURNS DOUBLE
export function {{name}}_ratio(a: f64, b: f64): f64 {
  if (b == 0) return fail<f64>("cannot divide by zero");
  return a / b;
}
