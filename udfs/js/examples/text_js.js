// JavaScript UDFs built by `weir udf build` (tests/sql/javascript.slt uses
// them). Each `// @udf` line declares one function SQL may call.

// @udf js_initials(name VARCHAR) RETURNS VARCHAR
function js_initials(name) {
  return name
    .split(/\s+/)
    .filter((w) => w.length > 0)
    .map((w) => w[0].toUpperCase() + ".")
    .join("");
}

// @udf js_word_count(text VARCHAR) RETURNS INT
function js_word_count(text) {
  const words = text.trim().split(/\s+/);
  return words[0] === "" ? 0 : words.length;
}

/** @udf js_parse_amount(text VARCHAR) RETURNS BIGINT */
function js_parse_amount(text) {
  const m = /^(\d+)\.(\d\d) [A-Z]{3}$/.exec(text);
  if (!m) throw new Error(`\`${text}\` is not an amount like \`12.34 EUR\``);
  return Number(m[1]) * 100 + Number(m[2]);
}

// @udf js_jitter(x DOUBLE) RETURNS DOUBLE VOLATILE
function js_jitter(x) {
  return x + Math.random() * 1e-9;
}
