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

/* {{name}}_total(x): an aggregate, the sum of the non-NULL values of each
 * group (docs/abi.md §9). The groups live here between calls: one instance
 * serves one accumulator. The state exported is one float64 per group. */
#define TOTAL_MAX_GROUPS 65536
static double total_sums[TOTAL_MAX_GROUPS];

static uint32_t total_fold(const weir_arg *args, uint32_t rows, uint32_t groups) {
    if (groups > TOTAL_MAX_GROUPS) return weir_fail(0, "more than 65536 groups");
    for (uint32_t i = 0; i < rows; i++) {
        if (weir_is_null(&args[1], i)) continue;
        total_sums[weir_group(&args[0], i)] += weir_f64(&args[1], i);
    }
    return weir_done();
}

/* Groups 0..n as one column; with `consume`, they are dropped and the rest
 * move down. */
static uint32_t total_emit(uint32_t n, uint32_t consume) {
    double *out = weir_out(n * 8);
    if (!out) return weir_fail(0, "out of memory");
    for (uint32_t g = 0; g < n; g++) out[g] = total_sums[g];
    if (consume) {
        for (uint32_t g = n; g < TOTAL_MAX_GROUPS; g++) total_sums[g - n] = total_sums[g];
        for (uint32_t g = TOTAL_MAX_GROUPS - n; g < TOTAL_MAX_GROUPS; g++) total_sums[g] = 0;
    }
    return weir_ok(n, 0, out, n * 8);
}

WEIR_AGGREGATE1({{name}}_total, float64, float64, float64)
WEIR_AGG_EXPORT({{name}}_total, update) uint32_t total_update(const weir_arg *a, uint32_t r, uint32_t g) {
    return total_fold(a, r, g);
}
WEIR_AGG_EXPORT({{name}}_total, merge) uint32_t total_merge(const weir_arg *a, uint32_t r, uint32_t g) {
    return total_fold(a, r, g);
}
WEIR_AGG_EXPORT({{name}}_total, state) uint32_t total_state(uint32_t n, uint32_t consume) {
    return total_emit(n, consume);
}
WEIR_AGG_EXPORT({{name}}_total, evaluate) uint32_t total_evaluate(uint32_t n, uint32_t consume) {
    return total_emit(n, consume);
}
