/* {{name}}: weir UDFs in C. See docs/udf-guide.md; the ABI is docs/abi.md. */
#include "weir_udf.h"

/* {{name}}(x) = x * 2 + 1; NULL in -> NULL out. Replace with your logic. */
WEIR_UDF1({{name}}, int64, int64)
WEIR_EXPORT({{name}}) uint32_t {{name}}(const weir_arg *args, uint32_t rows) {
    int64_t *out = weir_out(rows * 8);
    if (!out) return weir_fail(0, "out of memory");
    for (uint32_t i = 0; i < rows; i++) out[i] = weir_i64(&args[0], i) * 2 + 1;
    return weir_ok(rows, args[0].validity, out, rows * 8);
}

/* {{name}}_ratio(a, b) = a / b; a zero divisor fails the row. */
WEIR_UDF2({{name}}_ratio, float64, float64, float64)
WEIR_EXPORT({{name}}_ratio) uint32_t {{name}}_ratio(const weir_arg *args, uint32_t rows) {
    double *out = weir_out(rows * 8);
    if (!out) return weir_fail(0, "out of memory");
    for (uint32_t i = 0; i < rows; i++) {
        if (weir_is_null(&args[0], i) || weir_is_null(&args[1], i)) {
            out[i] = 0; /* this template assumes no NULLs; see the guide */
            continue;
        }
        double b = weir_f64(&args[1], i);
        if (b == 0.0) return weir_fail(i, "cannot divide by zero");
        out[i] = weir_f64(&args[0], i) / b;
    }
    return weir_ok(rows, 0, out, rows * 8);
}
