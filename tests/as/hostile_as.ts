// Hostile AssemblyScript (tests/sql/assemblyscript.slt): each meets one of
// the sandbox's limits, which reports it with its usual message.

// @udf as_spin(x BIGINT) RETURNS BIGINT
export function as_spin(x: i64): i64 {
  while (x >= 0) x = (x * 7 + 1) % 1000;
  return x;
}

// @udf as_hog(x BIGINT) RETURNS BIGINT
export function as_hog(x: i64): i64 {
  const keep: Array<Uint8Array> = [];
  for (;;) keep.push(new Uint8Array(1 << 20));
  return x;
}

function down(n: i64): i64 {
  return n == 0 ? 0 : down(n + 1) + 1;
}

// @udf as_deep(x BIGINT) RETURNS BIGINT
export function as_deep(x: i64): i64 {
  return down(x);
}

// @udf as_huge(x BIGINT) RETURNS VARCHAR
export function as_huge(x: i64): string {
  return "x".repeat(<i32>x);
}
