//! AssemblyScript UDFs: a `.ts` file's functions, declared with the same
//! `// @udf name(a BIGINT) RETURNS BIGINT` lines as JavaScript, become a
//! module through glue that weir writes and AssemblyScript's compiler
//! (`asc`, from npm) compiles with the user's file.
//!
//! The user writes one function per row, in AssemblyScript's own types
//! ([`as_type`]); the glue (`__weir_main.ts`, the entry file) exports one
//! function per declaration that follows docs/abi.md: it reads the batch's
//! argument buffers, calls the user's function for each row that has no
//! NULL argument, and writes the result column. The adapter library
//! [`ADAPTER`] (`udfs/as/weir.ts`) holds what the glue and the user's code
//! share: `fail` (a row error), `nullResult` (a NULL result), buffers reused
//! between batches, strings as UTF-8, `abort` (a `throw`) reported through
//! `weir_panic_info`. The module imports nothing: `asc` runs with the
//! `minimal` runtime (garbage collected when each batch starts) and with
//! `abort` bound to the adapter.

use std::fmt::Write;

use super::signature::Signature;
use crate::abi::AbiType;

/// The adapter library, written next to the glue as `weir.ts`.
pub const ADAPTER: &str = include_str!("../../../../udfs/as/weir.ts");

/// The entry file the glue is written to.
pub const ENTRY: &str = "__weir_main.ts";

/// The file name of the adapter, importable as `./weir`.
pub const ADAPTER_FILE: &str = "weir.ts";

/// The version of AssemblyScript the adapter is written and tested for.
pub const ASC_VERSION: &str = "0.28";

/// `asc`'s arguments after the entry file: optimized, the minimal runtime,
/// `abort` bound to the adapter (no `env.abort` import).
pub const ASC_FLAGS: &[&str] = &[
    "-O3",
    "--runtime",
    "minimal",
    "--use",
    "abort=weir/__weir_abort",
];

/// The AssemblyScript type a UDF's parameter or result of ABI type `t`
/// has: `BIGINT` is `i64`, `VARCHAR` is `string`, `BYTEA` is `Uint8Array`,
/// `TIMESTAMP` is `i64` microseconds since the epoch, `DATE` `i32` days.
pub fn as_type(t: AbiType) -> &'static str {
    match t {
        AbiType::Boolean => "bool",
        AbiType::Int8 => "i8",
        AbiType::Int16 => "i16",
        AbiType::Int32 | AbiType::Date32 => "i32",
        AbiType::Int64 | AbiType::TimestampMicros => "i64",
        AbiType::UInt8 => "u8",
        AbiType::UInt16 => "u16",
        AbiType::UInt32 => "u32",
        AbiType::UInt64 => "u64",
        AbiType::Float32 => "f32",
        AbiType::Float64 => "f64",
        AbiType::Utf8 => "string",
        AbiType::Binary => "Uint8Array",
    }
}

/// How the glue lays out a column of `t`: a bitmap (0), fixed-width
/// values (their width in bytes), or variable-length (-1).
fn width(t: AbiType) -> i32 {
    match t {
        AbiType::Boolean => 0,
        AbiType::Utf8 | AbiType::Binary => -1,
        AbiType::Int8 | AbiType::UInt8 => 1,
        AbiType::Int16 | AbiType::UInt16 => 2,
        AbiType::Int32 | AbiType::UInt32 | AbiType::Float32 | AbiType::Date32 => 4,
        AbiType::Int64 | AbiType::UInt64 | AbiType::Float64 | AbiType::TimestampMicros => 8,
    }
}

fn shift(width: i32) -> u32 {
    (width.max(1) as u32).trailing_zeros()
}

/// Argument `k` of row `i`, as the user's function takes it.
fn read_arg(k: usize, t: AbiType) -> String {
    match width(t) {
        0 => format!("__weir_bool(d{k}, i)"),
        -1 if t == AbiType::Utf8 => format!("__weir_str(d{k}, o{k}, i)"),
        -1 => format!("__weir_bytes(d{k}, o{k}, i)"),
        w => format!("load<{}>(d{k} + (<usize>i << {}))", as_type(t), shift(w)),
    }
}

/// The glue of the file `stem.ts` declaring `functions`: the entry file
/// `asc` compiles.
pub fn glue(stem: &str, functions: &[Signature]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Written by weir for `{stem}.ts`: one export per `@udf` line, as docs/abi.md asks.\n\
         // A type error here means a function's AssemblyScript types differ from its @udf line\n\
         // (BIGINT is i64, INT i32, DOUBLE f64, REAL f32, VARCHAR string, BYTEA Uint8Array,\n\
         // BOOLEAN bool, TIMESTAMP i64, DATE i32; see docs/udf-guide.md).\n\
         import {{ __weir_alloc, __weir_panic_info, __weir_begin, __weir_done, __weir_row_failed, __weir_valid,\n\
         \x20 __weir_bool, __weir_str, __weir_bytes, __weir_at, __weir_flag, __weir_null, __weir_put_bool,\n\
         \x20 __weir_put_str, __weir_put_bytes }} from \"./weir\";\n\
         import * as udf from \"./{stem}\";\n\
         \n\
         export function weir_alloc(size: usize): usize {{\n  return __weir_alloc(size);\n}}\n\
         \n\
         export function weir_panic_info(): usize {{\n  return __weir_panic_info();\n}}"
    );
    for f in functions {
        let w = width(f.ret);
        let _ = writeln!(
            out,
            "\nexport function {}(args: usize, n: u32): usize {{",
            f.name
        );
        for (k, (_, t)) in f.args.iter().enumerate() {
            let at = 16 * k;
            let _ = write!(
                out,
                "  const v{k} = <usize>load<u32>(args, {at}), d{k} = <usize>load<u32>(args, {});",
                at + 4
            );
            if width(*t) == -1 {
                let _ = write!(out, " const o{k} = <usize>load<u32>(args, {});", at + 12);
            }
            out.push('\n');
        }
        let nulls = if f.args.is_empty() {
            "0".to_string()
        } else {
            (0..f.args.len())
                .map(|k| format!("v{k}"))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let valid = (0..f.args.len())
            .map(|k| format!("__weir_valid(v{k}, i)"))
            .collect::<Vec<_>>()
            .join(" && ");
        let call = format!(
            "udf.{}({})",
            f.name,
            f.args
                .iter()
                .enumerate()
                .map(|(k, (_, t))| read_arg(k, *t))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(out, "  const nulls: usize = {nulls};");
        let _ = writeln!(out, "  const out = __weir_begin(n, {w});");
        let _ = writeln!(out, "  for (let i: u32 = 0; i < n; i++) {{");
        if !f.args.is_empty() {
            let _ = writeln!(
                out,
                "    if (nulls != 0 && !({valid})) {{\n      __weir_null(i);\n      continue;\n    }}"
            );
        }
        let _ = writeln!(out, "    __weir_at(i);");
        let _ = writeln!(out, "    const r = {call};");
        let _ = writeln!(
            out,
            "    if (__weir_flag() != 0) {{\n      if (__weir_flag() == 2) __weir_row_failed(i);\n      else __weir_null(i);\n      continue;\n    }}"
        );
        let store = match (w, f.ret) {
            (0, _) => "__weir_put_bool(i, r);".to_string(),
            (-1, t) => {
                let put = if t == AbiType::Utf8 {
                    "__weir_put_str(i, changetype<string>(r));"
                } else {
                    "__weir_put_bytes(i, changetype<Uint8Array>(r));"
                };
                format!(
                    "if (changetype<usize>(r) == 0) {{\n      __weir_null(i);\n      continue;\n    }}\n    {put}"
                )
            }
            (w, t) => format!(
                "store<{}>(out + (<usize>i << {}), r);",
                as_type(t),
                shift(w)
            ),
        };
        let _ = writeln!(out, "    {store}");
        let _ = writeln!(out, "  }}\n  return __weir_done(n, {w});\n}}");
    }
    out
}

/// The manifest (`weir.udf`) of `functions`: one JSON line each.
pub fn manifest(functions: &[Signature]) -> String {
    functions.iter().map(|f| f.manifest_line(None)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::parse_signature;

    #[test]
    fn the_glue_reads_each_type_and_skips_null_rows() {
        let f = parse_signature("f(a BIGINT, s VARCHAR, b BOOLEAN) RETURNS VARCHAR").unwrap();
        let g = glue("text", &[f]);
        assert!(g.contains("import * as udf from \"./text\";"), "{g}");
        assert!(
            g.contains("export function f(args: usize, n: u32): usize"),
            "{g}"
        );
        assert!(
            g.contains(
                "udf.f(load<i64>(d0 + (<usize>i << 3)), __weir_str(d1, o1, i), __weir_bool(d2, i))"
            ),
            "{g}"
        );
        assert!(g.contains("const nulls: usize = v0 | v1 | v2;"), "{g}");
        assert!(
            g.contains("__weir_put_str(i, changetype<string>(r));"),
            "{g}"
        );
        let m = manifest(&[parse_signature("f() RETURNS DOUBLE VOLATILE").unwrap()]);
        let line: serde_json::Value = serde_json::from_str(m.trim_end()).unwrap();
        assert_eq!(line["ret"], "float64");
        assert_eq!(line["deterministic"], false);
        assert!(m.ends_with('\n'));
    }
}
