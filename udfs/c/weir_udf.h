/* weir_udf.h — write weir UDFs in C (docs/abi.md, docs/udf-guide.md).
 *
 * Build: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -o f.wasm f.c
 * (`weir udf build` in a folder of .c files does this). Include this header
 * in exactly one .c file of a module: it defines `weir_alloc`.
 *
 *   WEIR_UDF1(scale, int64, int64)
 *   WEIR_EXPORT(scale) uint32_t scale(const weir_arg *args, uint32_t rows) {
 *       int64_t *out = weir_out(rows * 8);
 *       if (!out) return weir_fail(0, "out of memory");
 *       for (uint32_t i = 0; i < rows; i++) out[i] = weir_i64(&args[0], i) * 2;
 *       return weir_ok(rows, args[0].validity, out, rows * 8);   // NULL in -> NULL out
 *   }
 */
#ifndef WEIR_UDF_H
#define WEIR_UDF_H

#include <stddef.h>
#include <stdint.h>

/* One argument of a batch (docs/abi.md §3.1). */
typedef struct {
    uint32_t validity;   /* bitmap address, 0 when no value is NULL */
    uint32_t values;     /* values buffer address */
    uint32_t values_len; /* its length in bytes */
    uint32_t offsets;    /* n + 1 i32 offsets for utf8/binary, else 0 */
} weir_arg;

/* The result descriptor (docs/abi.md §4.1). */
typedef struct {
    uint32_t status, len, validity, values, values_len, offsets;
    uint32_t error_row, error_msg, error_len, reserved;
} weir_result;

/* Declares a function in the module's `weir.udf` manifest (a custom
 * section, written through the assembler: clang has no attribute for it).
 * WEIR_UDFn(name, ret, arg types...) for n arguments, deterministic;
 * WEIR_UDF_VOLATILEn for functions that are not (random, stateful).
 * Types are the ABI names of docs/abi.md §5: int64, float64, utf8, ... */
#define WEIR__S(x) "\\\"" #x "\\\""
#define WEIR__FN(fname, ret, det, argsjson)                                   \
    __asm__(".section .custom_section.weir.udf,\"\",@\n"                       \
            ".ascii \"{\\\"abi\\\":1,\\\"name\\\":" WEIR__S(fname)              \
            ",\\\"args\\\":[" argsjson "],\\\"ret\\\":" WEIR__S(ret)             \
            ",\\\"deterministic\\\":" #det "}\\n\"\n.text\n");
#define WEIR_UDF1(f, ret, a) WEIR__FN(f, ret, true, WEIR__S(a))
#define WEIR_UDF2(f, ret, a, b) WEIR__FN(f, ret, true, WEIR__S(a) "," WEIR__S(b))
#define WEIR_UDF3(f, ret, a, b, c) \
    WEIR__FN(f, ret, true, WEIR__S(a) "," WEIR__S(b) "," WEIR__S(c))
#define WEIR_UDF4(f, ret, a, b, c, d) \
    WEIR__FN(f, ret, true, WEIR__S(a) "," WEIR__S(b) "," WEIR__S(c) "," WEIR__S(d))
#define WEIR_UDF_VOLATILE1(f, ret, a) WEIR__FN(f, ret, false, WEIR__S(a))
#define WEIR_UDF_VOLATILE2(f, ret, a, b) WEIR__FN(f, ret, false, WEIR__S(a) "," WEIR__S(b))

/* Declares an aggregate (docs/abi.md §9) of one argument whose group state
 * is one column of type `state`; it exports f__update, f__merge, f__state
 * and f__evaluate (WEIR_AGG_EXPORT(f, update) ...). */
#define WEIR_AGGREGATE1(fname, ret, a, state)                                 \
    __asm__(".section .custom_section.weir.udf,\"\",@\n"                       \
            ".ascii \"{\\\"abi\\\":1,\\\"kind\\\":\\\"aggregate\\\",\\\"name\\\":" WEIR__S(fname) \
            ",\\\"args\\\":[" WEIR__S(a) "],\\\"ret\\\":" WEIR__S(ret)          \
            ",\\\"state\\\":[" WEIR__S(state) "]}\\n\"\n.text\n");
#define WEIR_AGG_EXPORT(fname, part) __attribute__((export_name(#fname "__" #part)))

/* Exports a function under its SQL name. */
#define WEIR_EXPORT(name) __attribute__((export_name(#name)))

/* clang turns plain loops into calls of these; there is no libc. */
__attribute__((weak)) void *memset(void *d, int c, size_t n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
__attribute__((weak)) void *memmove(void *d, const void *s, size_t n) {
    unsigned char *to = d;
    const unsigned char *from = s;
    if (to < from) {
        while (n--) *to++ = *from++;
    } else {
        while (n--) to[n] = from[n];
    }
    return d;
}
__attribute__((weak)) void *memcpy(void *d, const void *s, size_t n) {
    return memmove(d, s, n);
}

extern unsigned char __heap_base;
static uintptr_t weir__next;
static weir_result weir__result;

static int weir__ensure(uintptr_t end) {
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end <= have) return 1;
    uintptr_t pages = (end - have + 65535u) / 65536u;
    return __builtin_wasm_memory_grow(0, pages) != (size_t)-1;
}

/* The host's scratch space for one batch; outputs go right after it. */
__attribute__((export_name("weir_alloc"))) uint32_t weir_alloc(uint32_t size) {
    uintptr_t base = ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
    if (!weir__ensure(base + size)) return 0;
    weir__next = (base + size + 7u) & ~(uintptr_t)7u;
    return (uint32_t)base;
}

/* `size` bytes of output memory for this batch (8-aligned), or NULL. */
static inline void *weir_out(uint32_t size) {
    uintptr_t p = weir__next;
    if (!weir__ensure(p + size)) return NULL;
    weir__next = (p + size + 7u) & ~(uintptr_t)7u;
    return (void *)p;
}

static inline int weir_is_null(const weir_arg *a, uint32_t row) {
    if (!a->validity) return 0;
    const uint8_t *bits = (const uint8_t *)(uintptr_t)a->validity;
    return !((bits[row >> 3] >> (row & 7)) & 1);
}

static inline int64_t weir_i64(const weir_arg *a, uint32_t row) {
    return ((const int64_t *)(uintptr_t)a->values)[row];
}

static inline double weir_f64(const weir_arg *a, uint32_t row) {
    return ((const double *)(uintptr_t)a->values)[row];
}

/* Success: `rows` values of a fixed-width type; `validity` is a bitmap
 * address (e.g. an argument's, to pass its NULLs through) or 0. */
static inline uint32_t weir_ok(uint32_t rows, uint32_t validity, const void *values,
                               uint32_t values_len) {
    weir__result = (weir_result){0};
    weir__result.len = rows;
    weir__result.validity = validity;
    weir__result.values = (uint32_t)(uintptr_t)values;
    weir__result.values_len = values_len;
    return (uint32_t)(uintptr_t)&weir__result;
}

/* An aggregate's group of row `row` (argument 0 of a fold is the group ids). */
static inline uint32_t weir_group(const weir_arg *ids, uint32_t row) {
    return ((const uint32_t *)(uintptr_t)ids->values)[row];
}

/* Success of an aggregate's fold (update, merge, retract): no column. */
static inline uint32_t weir_done(void) {
    weir__result = (weir_result){0};
    return (uint32_t)(uintptr_t)&weir__result;
}

static inline uint32_t weir__strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* One failing row of a status-2 result (ABI 1.1, docs/abi.md §4.3). */
typedef struct {
    uint32_t row;     /* 0-based; rows strictly increase */
    uint32_t msg;     /* address of its UTF-8 message */
    uint32_t msg_len; /* its length in bytes (the first 4096 are read) */
} weir_row_error;

/* ABI 1.1: the column finished by weir_ok_* (its descriptor `result`)
 * failed on `count` rows, each NULL in it and named in `errors` (which,
 * with the messages, must outlive the call). One call reports every bad
 * row of the batch; the host computes no row twice. */
static inline uint32_t weir_with_row_errors(uint32_t result, const weir_row_error *errors,
                                            uint32_t count) {
    weir_result *r = (weir_result *)(uintptr_t)result;
    if (count == 0) return result;
    r->status = 2;
    r->error_row = count;
    r->error_msg = (uint32_t)(uintptr_t)errors;
    r->error_len = 0;
    return result;
}

/* Failure of one row, with a message (a string that outlives the call). */
static inline uint32_t weir_fail(uint32_t row, const char *message) {
    weir__result = (weir_result){0};
    weir__result.status = 1;
    weir__result.error_row = row;
    weir__result.error_msg = (uint32_t)(uintptr_t)message;
    weir__result.error_len = weir__strlen(message);
    return (uint32_t)(uintptr_t)&weir__result;
}

#endif
