/* weir_js.c: the JavaScript runtime guest (QuickJS-NG inside weir's sandbox).
 *
 * Linked with QuickJS-NG's sources and wasi-libc's libc.a (both from the
 * `rquickjs-sys` crate on crates.io) by `udfs/js/build.sh` into
 * `udfs/js/weir_js.wasm`, a module with no imports. `weir udf build` and
 * `CREATE FUNCTION … LANGUAGE javascript` never relink it: they append two
 * custom sections to a copy, the manifest (`weir.udf`, each function naming
 * its export `weir_js_fn_K`) and the program (`weir.init`, docs/abi.md §10),
 * which the host hands to `weir_init` once per instance.
 *
 * Exports:
 *   weir_alloc(size)          the batch's scratch space (docs/abi.md §3)
 *   weir_init(ptr, len)       reads the program: functions and bytecode
 *   weir_js_fn_0 … _31        function K of the program, one batch
 *   weir_js_compile           build time: (filename, source) -> bytecode
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quickjs.h"

/* The shim's one import, the clock, is defined here: a UDF has no clock. */
double __rquickjs_host_now_us(void) { return 0; }

/* A reactor, not a command: with `_initialize` exported, wasm-ld does not
 * wrap every export in a run of the constructors and destructors (which
 * would tear libc down after each call). The host never calls it; the
 * constructors run once, from the first entry point. */
extern void __wasm_call_ctors(void);
static int constructed;
static void construct(void) {
    if (!constructed) {
        constructed = 1;
        __wasm_call_ctors();
    }
}
__attribute__((export_name("_initialize"))) void weir_js_initialize(void) { construct(); }

#define MAX_FUNCS 32
#define MAX_ARGS 32
#define MAX_MESSAGE 4096

enum {
    T_BOOLEAN, T_INT8, T_INT16, T_INT32, T_INT64, T_UINT8, T_UINT16, T_UINT32,
    T_UINT64, T_FLOAT32, T_FLOAT64, T_UTF8, T_BINARY, T_TIMESTAMP_US, T_DATE32,
    T_COUNT
};
static const uint32_t WIDTH[T_COUNT] = {0, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 0, 0, 8, 4};
static const char *const SQL_NAME[T_COUNT] = {
    "BOOLEAN", "TINYINT", "SMALLINT", "INT", "BIGINT", "TINYINT UNSIGNED",
    "SMALLINT UNSIGNED", "INT UNSIGNED", "BIGINT UNSIGNED", "REAL", "DOUBLE",
    "VARCHAR", "BYTEA", "TIMESTAMP", "DATE"};

typedef struct {
    uint32_t validity, values, values_len, offsets;
} weir_arg;

typedef struct {
    uint32_t status, len, validity, values, values_len, offsets;
    uint32_t error_row, error_msg, error_len, reserved;
} weir_result;

typedef struct {
    JSValue fn;
    uint32_t nargs;
    uint8_t args[MAX_ARGS];
    uint8_t ret;
    uint8_t deterministic;
    char name[65];
} js_func;

typedef struct {
    uint8_t *values;
    int32_t *offsets;
    uint32_t used, cap;
} column;

static JSRuntime *rt;
static JSContext *ctx;
static js_func funcs[MAX_FUNCS];
static uint32_t nfuncs;
static int current_deterministic = 1;
static uint64_t random_state = 0x9E3779B97F4A7C15ull;

static weir_result result;
static char message[MAX_MESSAGE];

/* Everything a batch allocated, freed at the next weir_alloc. */
static void *batch_blocks[8];
static uint32_t nblocks;

static void *batch_malloc(size_t n) {
    if (nblocks == sizeof batch_blocks / sizeof batch_blocks[0]) return NULL;
    void *p = aligned_alloc(8, (n + 7) & ~(size_t)7);
    if (p) batch_blocks[nblocks++] = p;
    return p;
}

static void *batch_realloc(void *old, size_t n) {
    for (uint32_t i = 0; i < nblocks; i++) {
        if (batch_blocks[i] == old) {
            void *p = realloc(old, (n + 7) & ~(size_t)7);
            if (p) batch_blocks[i] = p;
            return p;
        }
    }
    return NULL;
}

__attribute__((export_name("weir_alloc"))) uint32_t weir_alloc(uint32_t size) {
    construct();
    for (uint32_t i = 0; i < nblocks; i++) free(batch_blocks[i]);
    nblocks = 0;
    return (uint32_t)(uintptr_t)batch_malloc(size ? size : 8);
}

static uint32_t fail_text(uint32_t row, const char *text, size_t len) {
    if (len > MAX_MESSAGE) len = MAX_MESSAGE;
    memcpy(message, text, len);
    result = (weir_result){0};
    result.status = 1;
    result.error_row = row;
    result.error_msg = (uint32_t)(uintptr_t)message;
    result.error_len = (uint32_t)len;
    return (uint32_t)(uintptr_t)&result;
}

static uint32_t fail(uint32_t row, const char *text) { return fail_text(row, text, strlen(text)); }

/* The pending exception as "TypeError: message (at f (udf.js:3:9))". */
static uint32_t fail_exception(uint32_t row) {
    JSValue e = JS_GetException(ctx);
    size_t len = 0;
    const char *s = JS_ToCStringLen(ctx, &len, e);
    char buf[MAX_MESSAGE];
    size_t n = 0;
    if (s) {
        n = len < MAX_MESSAGE ? len : MAX_MESSAGE;
        memcpy(buf, s, n);
        JS_FreeCString(ctx, s);
    } else {
        n = strlen("an exception that cannot be printed");
        memcpy(buf, "an exception that cannot be printed", n);
    }
    if (JS_IsError(e)) {
        JSValue stack = JS_GetPropertyStr(ctx, e, "stack");
        const char *st = JS_IsString(stack) ? JS_ToCString(ctx, stack) : NULL;
        if (st) {
            const char *at = strstr(st, "at ");
            if (at) {
                size_t m = strcspn(at, "\n");
                if (n + m + 3 < MAX_MESSAGE) {
                    buf[n++] = ' ';
                    buf[n++] = '(';
                    memcpy(buf + n, at, m);
                    n += m;
                    buf[n++] = ')';
                }
            }
            JS_FreeCString(ctx, st);
        }
        JS_FreeValue(ctx, stack);
    }
    JS_FreeValue(ctx, e);
    return fail_text(row, buf, n);
}

static uint32_t ok(uint32_t rows, void *validity, void *values, uint32_t values_len, void *offsets) {
    result = (weir_result){0};
    result.len = rows;
    result.validity = (uint32_t)(uintptr_t)validity;
    result.values = (uint32_t)(uintptr_t)values;
    result.values_len = values_len;
    result.offsets = (uint32_t)(uintptr_t)offsets;
    return (uint32_t)(uintptr_t)&result;
}

/* --- the sandbox's JavaScript: no clock, randomness only when declared --- */

static JSValue js_random(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    (void)argc;
    (void)argv;
    if (current_deterministic)
        return JS_ThrowTypeError(c, "Math.random() in a deterministic function: declare it VOLATILE");
    /* xorshift64*, seeded per instance: reproducible, not secret */
    random_state ^= random_state >> 12;
    random_state ^= random_state << 25;
    random_state ^= random_state >> 27;
    uint64_t r = random_state * 0x2545F4914F6CDD1Dull;
    return JS_NewFloat64(c, (double)(r >> 11) * (1.0 / 9007199254740992.0));
}

static const char PRELUDE[] =
    "(() => {\n"
    "  const D = Date;\n"
    "  const noClock = () => { throw new TypeError('a weir UDF has no clock: Date.now() and new Date() "
    "without an argument are not available'); };\n"
    "  D.now = noClock;\n"
    "  globalThis.Date = new Proxy(D, {\n"
    "    construct(t, a, nt) { if (a.length === 0) noClock(); return Reflect.construct(t, a, nt); },\n"
    "    apply() { noClock(); },\n"
    "  });\n"
    "})();\n";

static int new_context(void) {
    rt = JS_NewRuntime();
    if (!rt) return 0;
    /* the C stack is 1 MiB (build.sh); JS recursion stops well inside it */
    JS_SetMaxStackSize(rt, 768 * 1024);
    ctx = JS_NewContext(rt);
    if (!ctx) return 0;
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue math = JS_GetPropertyStr(ctx, global, "Math");
    JS_SetPropertyStr(ctx, math, "random", JS_NewCFunction(ctx, js_random, "random", 0));
    JS_FreeValue(ctx, math);
    JS_FreeValue(ctx, global);
    JSValue r = JS_Eval(ctx, PRELUDE, sizeof PRELUDE - 1, "<weir>", JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(r)) return 0;
    JS_FreeValue(ctx, r);
    return 1;
}

/* --- build time: source to bytecode --- */

/* weir_js_compile(filename utf8, source utf8) -> binary: an ABI function
 * (docs/abi.md §4) the host calls through its sandbox, with a manifest
 * line of its own, to turn scripts into bytecode. A syntax error is the
 * row's error. */
static uint32_t compile_batch(const weir_arg *args, uint32_t rows) {
    if (!ctx && !new_context()) return fail(0, "cannot create a JavaScript context");
    column c = {0};
    c.cap = 4096;
    c.values = batch_malloc(c.cap);
    c.offsets = batch_malloc((rows + 1) * 4);
    if (!c.values || !c.offsets) __builtin_trap();
    c.offsets[0] = 0;
    for (uint32_t row = 0; row < rows; row++) {
        const int32_t *no = (const int32_t *)(uintptr_t)args[0].offsets;
        const int32_t *so = (const int32_t *)(uintptr_t)args[1].offsets;
        const char *names = (const char *)(uintptr_t)args[0].values;
        const char *sources = (const char *)(uintptr_t)args[1].values;
        size_t name_len = (size_t)(no[row + 1] - no[row]);
        size_t len = (size_t)(so[row + 1] - so[row]);
        char *name = malloc(name_len + 1);
        char *source = malloc(len + 1);
        if (!name || !source) __builtin_trap();
        memcpy(name, names + no[row], name_len);
        name[name_len] = 0;
        memcpy(source, sources + so[row], len);
        source[len] = 0;
        JSValue obj = JS_Eval(ctx, source, len, name, JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_COMPILE_ONLY);
        free(source);
        free(name);
        if (JS_IsException(obj)) return fail_exception(row);
        size_t size = 0;
        uint8_t *code = JS_WriteObject(ctx, &size, obj, JS_WRITE_OBJ_BYTECODE);
        JS_FreeValue(ctx, obj);
        if (!code) return fail_exception(row);
        if (c.used + size > c.cap) {
            uint32_t cap = c.cap * 2 > c.used + size ? c.cap * 2 : (uint32_t)(c.used + size);
            uint8_t *nv = batch_realloc(c.values, cap);
            if (!nv) __builtin_trap();
            c.values = nv;
            c.cap = cap;
        }
        memcpy(c.values + c.used, code, size);
        c.used += (uint32_t)size;
        c.offsets[row + 1] = (int32_t)c.used;
        js_free(ctx, code);
    }
    return ok(rows, NULL, c.values, c.used, c.offsets);
}

/* --- per instance: the program --- */

static int read_u32(const uint8_t **p, const uint8_t *end, uint32_t *v) {
    if (end - *p < 4) return 0;
    *v = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 | (uint32_t)(*p)[3] << 24;
    *p += 4;
    return 1;
}

/* The program (written by weir, crates/weir-core/src/udf/javascript.rs):
 * "WJS1", u32 functions, per function { u32 name length, name, u32 args,
 * u8 type per argument, u8 return type, u8 deterministic }, then the
 * bytecode to the end. All integers little-endian. */
__attribute__((export_name("weir_init"))) uint32_t weir_init(uint32_t ptr, uint32_t len) {
    const uint8_t *p = (const uint8_t *)(uintptr_t)ptr, *end = p + len;
    uint32_t n;
    if (len < 4 || memcmp(p, "WJS1", 4) != 0) return fail(0, "the program is not a weir JavaScript program");
    p += 4;
    if (!read_u32(&p, end, &n) || n == 0 || n > MAX_FUNCS) return fail(0, "the program declares no functions or more than 32");
    if (!new_context()) return fail(0, "cannot create a JavaScript context");
    for (uint32_t i = 0; i < n; i++) {
        js_func *f = &funcs[i];
        uint32_t name_len;
        if (!read_u32(&p, end, &name_len) || name_len == 0 || name_len > 64 || end - p < name_len)
            return fail(0, "the program is truncated");
        memcpy(f->name, p, name_len);
        f->name[name_len] = 0;
        p += name_len;
        if (!read_u32(&p, end, &f->nargs) || f->nargs > MAX_ARGS || end - p < f->nargs + 2)
            return fail(0, "the program is truncated");
        for (uint32_t a = 0; a < f->nargs; a++) {
            if (p[a] >= T_COUNT) return fail(0, "the program names an unknown type");
            f->args[a] = p[a];
        }
        p += f->nargs;
        if (p[0] >= T_COUNT) return fail(0, "the program names an unknown type");
        f->ret = p[0];
        f->deterministic = p[1] != 0;
        p += 2;
    }
    JSValue code = JS_ReadObject(ctx, p, end - p, JS_READ_OBJ_BYTECODE);
    if (JS_IsException(code)) return fail_exception(0);
    JSValue r = JS_EvalFunction(ctx, code);
    if (JS_IsException(r)) return fail_exception(0);
    JS_FreeValue(ctx, r);
    JSValue global = JS_GetGlobalObject(ctx);
    for (uint32_t i = 0; i < n; i++) {
        funcs[i].fn = JS_GetPropertyStr(ctx, global, funcs[i].name);
        if (!JS_IsFunction(ctx, funcs[i].fn)) {
            JS_FreeValue(ctx, global);
            char buf[160];
            size_t k = 0;
            const char *a = "the script defines no function `";
            memcpy(buf, a, strlen(a));
            k = strlen(a);
            memcpy(buf + k, funcs[i].name, strlen(funcs[i].name));
            k += strlen(funcs[i].name);
            buf[k++] = '`';
            return fail_text(0, buf, k);
        }
    }
    JS_FreeValue(ctx, global);
    nfuncs = n;
    return ok(0, NULL, NULL, 0, NULL);
}

/* --- one batch --- */

static int is_null(const weir_arg *a, uint32_t row) {
    if (!a->validity) return 0;
    const uint8_t *bits = (const uint8_t *)(uintptr_t)a->validity;
    return !((bits[row >> 3] >> (row & 7)) & 1);
}

static JSValue to_js(const weir_arg *a, uint8_t type, uint32_t row, uint32_t *bad) {
    const uint8_t *v = (const uint8_t *)(uintptr_t)a->values;
    switch (type) {
    case T_BOOLEAN: return JS_NewBool(ctx, (v[row >> 3] >> (row & 7)) & 1);
    case T_INT8: return JS_NewInt32(ctx, ((const int8_t *)v)[row]);
    case T_INT16: return JS_NewInt32(ctx, ((const int16_t *)v)[row]);
    case T_INT32: return JS_NewInt32(ctx, ((const int32_t *)v)[row]);
    case T_UINT8: return JS_NewInt32(ctx, ((const uint8_t *)v)[row]);
    case T_UINT16: return JS_NewInt32(ctx, ((const uint16_t *)v)[row]);
    case T_UINT32: return JS_NewFloat64(ctx, ((const uint32_t *)v)[row]);
    case T_INT64: {
        int64_t x = ((const int64_t *)v)[row];
        if (x > 9007199254740991ll || x < -9007199254740991ll) *bad = 1;
        return JS_NewFloat64(ctx, (double)x);
    }
    case T_UINT64: {
        uint64_t x = ((const uint64_t *)v)[row];
        if (x > 9007199254740991ull) *bad = 1;
        return JS_NewFloat64(ctx, (double)x);
    }
    case T_FLOAT32: return JS_NewFloat64(ctx, ((const float *)v)[row]);
    case T_FLOAT64: return JS_NewFloat64(ctx, ((const double *)v)[row]);
    case T_UTF8: {
        const int32_t *o = (const int32_t *)(uintptr_t)a->offsets;
        return JS_NewStringLen(ctx, (const char *)v + o[row], o[row + 1] - o[row]);
    }
    case T_BINARY: {
        const int32_t *o = (const int32_t *)(uintptr_t)a->offsets;
        return JS_NewUint8ArrayCopy(ctx, v + o[row], o[row + 1] - o[row]);
    }
    case T_TIMESTAMP_US: {
        int64_t us = ((const int64_t *)v)[row];
        return JS_NewDate(ctx, floor((double)us / 1000.0));
    }
    case T_DATE32: return JS_NewDate(ctx, (double)((const int32_t *)v)[row] * 86400000.0);
    }
    return JS_UNDEFINED;
}

/* A number as an integer of [lo, hi], or 0 with a message. */
static int to_integer(JSValueConst r, double lo, double hi, int64_t *out) {
    if (JS_IsBigInt(r)) {
        int64_t x;
        if (JS_ToBigInt64(ctx, &x, r) < 0) return 0;
        if ((double)x < lo || (double)x > hi) return 0;
        *out = x;
        return 1;
    }
    if (!JS_IsNumber(r) && !JS_IsBool(r)) return 0;
    double d;
    if (JS_ToFloat64(ctx, &d, r) < 0) return 0;
    if (d != trunc(d) || d < lo || d > hi) return 0;
    *out = (int64_t)d;
    return 1;
}

static int date_ms(JSValueConst r, double *ms) {
    if (JS_IsDate(r)) {
        JSValue t = JS_Invoke(ctx, r, JS_NewAtom(ctx, "getTime"), 0, NULL);
        int rc = !JS_IsException(t) && JS_ToFloat64(ctx, ms, t) == 0 && isfinite(*ms);
        JS_FreeValue(ctx, t);
        return rc;
    }
    if (JS_IsNumber(r)) return JS_ToFloat64(ctx, ms, r) == 0 && isfinite(*ms);
    return 0;
}

/* Writes the value of one row; returns 0 when it does not fit the type. */
static int put(column *c, uint8_t type, uint32_t row, JSValueConst r) {
    int64_t i;
    double d;
    switch (type) {
    case T_BOOLEAN:
        if (JS_ToBool(ctx, r)) c->values[row >> 3] |= (uint8_t)(1u << (row & 7));
        return 1;
    case T_INT8: if (!to_integer(r, -128, 127, &i)) return 0; ((int8_t *)c->values)[row] = (int8_t)i; return 1;
    case T_INT16: if (!to_integer(r, -32768, 32767, &i)) return 0; ((int16_t *)c->values)[row] = (int16_t)i; return 1;
    case T_INT32: if (!to_integer(r, -2147483648.0, 2147483647.0, &i)) return 0; ((int32_t *)c->values)[row] = (int32_t)i; return 1;
    case T_UINT8: if (!to_integer(r, 0, 255, &i)) return 0; ((uint8_t *)c->values)[row] = (uint8_t)i; return 1;
    case T_UINT16: if (!to_integer(r, 0, 65535, &i)) return 0; ((uint16_t *)c->values)[row] = (uint16_t)i; return 1;
    case T_UINT32: if (!to_integer(r, 0, 4294967295.0, &i)) return 0; ((uint32_t *)c->values)[row] = (uint32_t)i; return 1;
    case T_INT64:
        if (!to_integer(r, -9223372036854775808.0, 9223372036854775807.0, &i)) return 0;
        ((int64_t *)c->values)[row] = i;
        return 1;
    case T_UINT64: {
        if (JS_IsBigInt(r)) {
            uint64_t u;
            if (JS_ToBigUint64(ctx, &u, r) < 0) return 0;
            ((uint64_t *)c->values)[row] = u;
            return 1;
        }
        if (!to_integer(r, 0, 9007199254740991.0, &i)) return 0;
        ((uint64_t *)c->values)[row] = (uint64_t)i;
        return 1;
    }
    case T_FLOAT32:
    case T_FLOAT64:
        if (!JS_IsNumber(r) && !JS_IsBool(r)) return 0;
        if (JS_ToFloat64(ctx, &d, r) < 0) return 0;
        if (type == T_FLOAT32) ((float *)c->values)[row] = (float)d;
        else ((double *)c->values)[row] = d;
        return 1;
    case T_UTF8:
    case T_BINARY: {
        const uint8_t *bytes;
        size_t len = 0;
        const char *s = NULL;
        if (type == T_UTF8) {
            s = JS_ToCStringLen(ctx, &len, r);
            if (!s) return 0;
            bytes = (const uint8_t *)s;
        } else {
            bytes = JS_GetUint8Array(ctx, &len, r);
            if (!bytes) {
                JS_FreeValue(ctx, JS_GetException(ctx));
                bytes = JS_GetArrayBuffer(ctx, &len, r);
            }
            if (!bytes) return 0;
        }
        if (c->used + len > c->cap) {
            uint32_t cap = c->cap * 2 > c->used + len ? c->cap * 2 : (uint32_t)(c->used + len);
            uint8_t *nv = batch_realloc(c->values, cap);
            if (!nv) {
                if (s) JS_FreeCString(ctx, s);
                return -1;
            }
            c->values = nv;
            c->cap = cap;
        }
        memcpy(c->values + c->used, bytes, len);
        c->used += (uint32_t)len;
        c->offsets[row + 1] = (int32_t)c->used;
        if (s) JS_FreeCString(ctx, s);
        return 1;
    }
    case T_TIMESTAMP_US:
        if (!date_ms(r, &d)) return 0;
        ((int64_t *)c->values)[row] = (int64_t)d * 1000;
        return 1;
    case T_DATE32:
        if (!date_ms(r, &d)) return 0;
        ((int32_t *)c->values)[row] = (int32_t)floor(d / 86400000.0);
        return 1;
    }
    return 0;
}

static uint32_t returned_wrong(uint32_t row, uint8_t type, JSValueConst r) {
    char buf[256];
    size_t k = 0, len = 0;
    const char *a = "returned ";
    memcpy(buf, a, strlen(a));
    k = strlen(a);
    JSValue e = JS_GetException(ctx);
    JS_FreeValue(ctx, e);
    const char *s = JS_ToCStringLen(ctx, &len, r);
    if (s) {
        if (len > 64) len = 64;
        memcpy(buf + k, s, len);
        k += len;
        JS_FreeCString(ctx, s);
    } else {
        JS_FreeValue(ctx, JS_GetException(ctx));
    }
    const char *b = ", which is not a ";
    memcpy(buf + k, b, strlen(b));
    k += strlen(b);
    memcpy(buf + k, SQL_NAME[type], strlen(SQL_NAME[type]));
    k += strlen(SQL_NAME[type]);
    return fail_text(row, buf, k);
}

/* ABI 1.1 (docs/abi.md 4.3): the rows of this call that failed, each NULL in
 * the column, reported together with it (status 2). */
typedef struct {
    uint32_t row, msg, msg_len;
} row_error;
static row_error *failed_rows;
static uint32_t nfailed;
/* The failed rows' messages, one after the other in one block of the batch
 * (`msg` holds an offset into it until the call ends). */
static char *failed_text;
static uint32_t failed_used, failed_cap;

/* Row `row` failed (the message is in `result`, set by fail*): keeps a copy
 * of the message and the row; the call goes on with the next row. */
static void row_failed(uint32_t row) {
    uint32_t len = result.error_len;
    if (failed_used + len > failed_cap) {
        uint32_t cap = (failed_used + len) * 2 + 256;
        char *grown = batch_realloc(failed_text, cap);
        if (!grown) __builtin_trap(); /* only when the memory limit refused to grow */
        failed_text = grown;
        failed_cap = cap;
    }
    memcpy(failed_text + failed_used, (const char *)(uintptr_t)result.error_msg, len);
    failed_rows[nfailed++] = (row_error){row, failed_used, len};
    failed_used += len;
}

static uint32_t call(uint32_t k, const weir_arg *args, uint32_t rows) {
    if (k >= nfuncs) return fail(0, "no such function: the program was not loaded");
    js_func *f = &funcs[k];
    current_deterministic = f->deterministic;
    uint8_t type = f->ret;
    uint32_t bitmap = (rows + 7) / 8;
    uint8_t *validity = batch_malloc(bitmap);
    column c = {0};
    uint32_t values_len = type == T_BOOLEAN ? bitmap : rows * WIDTH[type];
    if (type == T_UTF8 || type == T_BINARY) {
        c.cap = rows * 8 + 64;
        c.values = batch_malloc(c.cap);
        c.offsets = batch_malloc((rows + 1) * 4);
        if (c.offsets) c.offsets[0] = 0;
    } else {
        c.values = batch_malloc(values_len ? values_len : 8);
    }
    if (!validity || !c.values || ((type == T_UTF8 || type == T_BINARY) && !c.offsets))
        __builtin_trap(); /* only reachable when the memory limit refused to grow */
    memset(validity, 0xff, bitmap);
    if (type == T_BOOLEAN) memset(c.values, 0, bitmap);
    int any_null = 0;
    nfailed = 0;
    failed_rows = batch_malloc(rows ? rows * sizeof(row_error) : 8);
    failed_cap = 256;
    failed_used = 0;
    failed_text = batch_malloc(failed_cap);
    if (!failed_rows || !failed_text) __builtin_trap();
#define ROW_FAILED(row)                                                     \
    do {                                                                    \
        row_failed(row);                                                    \
        validity[(row) >> 3] &= (uint8_t)~(1u << ((row) & 7));              \
        any_null = 1;                                                       \
        if (c.offsets) c.offsets[(row) + 1] = (int32_t)c.used;              \
    } while (0)
    JSValue argv[MAX_ARGS];
    for (uint32_t row = 0; row < rows; row++) {
        int null = 0;
        for (uint32_t a = 0; a < f->nargs; a++) null |= is_null(&args[a], row);
        if (null) {
            validity[row >> 3] &= (uint8_t)~(1u << (row & 7));
            any_null = 1;
            if (c.offsets) c.offsets[row + 1] = (int32_t)c.used;
            continue;
        }
        uint32_t bad = 0;
        for (uint32_t a = 0; a < f->nargs; a++) argv[a] = to_js(&args[a], f->args[a], row, &bad);
        if (bad) {
            for (uint32_t a = 0; a < f->nargs; a++) JS_FreeValue(ctx, argv[a]);
            fail(row, "an argument is beyond 2^53 and has no exact JavaScript number; pass it as VARCHAR or DOUBLE");
            ROW_FAILED(row);
            continue;
        }
        JSValue r = JS_Call(ctx, f->fn, JS_UNDEFINED, (int)f->nargs, argv);
        for (uint32_t a = 0; a < f->nargs; a++) JS_FreeValue(ctx, argv[a]);
        if (JS_IsException(r)) {
            fail_exception(row);
            ROW_FAILED(row);
            continue;
        }
        if (JS_IsNull(r) || JS_IsUndefined(r)) {
            validity[row >> 3] &= (uint8_t)~(1u << (row & 7));
            any_null = 1;
            if (c.offsets) c.offsets[row + 1] = (int32_t)c.used;
            continue;
        }
        int put_ok = put(&c, type, row, r);
        if (put_ok < 0) __builtin_trap();
        if (!put_ok) {
            returned_wrong(row, type, r);
            JS_FreeValue(ctx, r);
            ROW_FAILED(row);
            continue;
        }
        JS_FreeValue(ctx, r);
    }
#undef ROW_FAILED
    if (c.offsets) values_len = c.used;
    uint32_t out = ok(rows, any_null ? validity : NULL, c.values, values_len, c.offsets);
    if (nfailed) {
        for (uint32_t i = 0; i < nfailed; i++)
            failed_rows[i].msg += (uint32_t)(uintptr_t)failed_text;
        result.status = 2;
        result.error_row = nfailed;
        result.error_msg = (uint32_t)(uintptr_t)failed_rows;
        result.error_len = 0;
    }
    return out;
}

#define FN(k)                                                                          \
    __attribute__((export_name("weir_js_fn_" #k))) uint32_t weir_js_fn_##k(uint32_t a, \
                                                                          uint32_t n) { \
        return call(k, (const weir_arg *)(uintptr_t)a, n);                             \
    }
FN(0) FN(1) FN(2) FN(3) FN(4) FN(5) FN(6) FN(7) FN(8) FN(9) FN(10) FN(11) FN(12) FN(13)
FN(14) FN(15) FN(16) FN(17) FN(18) FN(19) FN(20) FN(21) FN(22) FN(23) FN(24) FN(25)
FN(26) FN(27) FN(28) FN(29) FN(30) FN(31)

__attribute__((export_name("weir_js_compile"))) uint32_t weir_js_compile(uint32_t a, uint32_t n) {
    return compile_batch((const weir_arg *)(uintptr_t)a, n);
}
