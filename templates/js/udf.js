// {{name}}: weir UDFs in JavaScript (QuickJS-NG inside weir's sandbox).
// See docs/udf-guide.md. Each `// @udf` line declares a function SQL may
// call, with SQL types. A NULL argument gives NULL without a call; return
// null or undefined for NULL; a thrown error fails that row with its
// message. There is no clock, no I/O, and Math.random() only in functions
// declared VOLATILE.

// @udf {{name}}(x BIGINT) RETURNS BIGINT
function {{name}}(x) {
  return x * 2 + 1;
}

// @udf {{name}}_title(s VARCHAR) RETURNS VARCHAR
function {{name}}_title(s) {
  return s
    .split(" ")
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join(" ");
}

// @udf {{name}}_ratio(a DOUBLE, b DOUBLE) RETURNS DOUBLE
function {{name}}_ratio(a, b) {
  if (b === 0) throw new RangeError("cannot divide by zero");
  return a / b;
}
