// weir.ts: AssemblyScript's side of weir's UDF ABI (docs/abi.md), shipped
// with weir and used by the glue `weir udf build` writes for each `.ts`
// file (docs/udf-guide.md, "AssemblyScript").
//
// A UDF itself needs only two functions of this file:
//
//   fail<T>(message)   fails the current row with `message`; return what it
//                      returns: `return fail<f64>("cannot divide by zero")`
//   nullResult<T>()    makes the current row's result NULL:
//                      `return nullResult<i64>()`
//
// A `throw` (AssemblyScript's `abort`) also fails the batch with its
// message and row, but it discards the instance (a trap): prefer `fail`.
// Everything named `__weir_*` is for the generated glue.
//
// Memory: the host's argument buffers and the results are kept in
// unmanaged blocks reused from batch to batch; everything the functions
// allocate (strings, arrays) is garbage once the batch is answered and is
// collected when the next batch starts (the `minimal` runtime).

const RESULT: usize = memory.data(40);
const PANIC: usize = memory.data(12);

let scratch: usize = 0;
let scratchCap: usize = 0;
let values: usize = 0;
let valuesCap: usize = 0;
let validity: usize = 0;
let validityCap: usize = 0;
let offsets: usize = 0;
let offsetsCap: usize = 0;
let used: usize = 0;
let anyNull: bool = false;
let varLen: bool = false;
let flag: i32 = 0;
let failMessage: string = "";
let messageBuf: usize = 0;
let messageCap: usize = 0;
let row: u32 = 0;
let aborting: bool = false;
// Rows of this batch that failed (ABI 1.1): 12-byte records {row, offset of
// the message in `failedText`, length}; addresses once the batch is done.
let failedRows: usize = 0;
let failedRowsCap: usize = 0;
let failedCount: u32 = 0;
let failedText: usize = 0;
let failedTextCap: usize = 0;
let failedUsed: usize = 0;

/** Fails the current row with `message`. Return its result from the UDF. */
export function fail<T>(message: string): T {
  failMessage = message;
  flag = 2;
  if (isReference<T>()) return changetype<T>(0);
  return <T>0;
}

/** Makes the current row's result NULL. Return its result from the UDF. */
export function nullResult<T>(): T {
  if (flag == 0) flag = 1;
  if (isReference<T>()) return changetype<T>(0);
  return <T>0;
}

// A block of at least `need` bytes, replacing `ptr` (contents dropped).
function fresh(ptr: usize, need: usize): usize {
  if (ptr != 0) heap.free(ptr);
  return heap.alloc(need);
}

function capacity(need: usize): usize {
  return need < 1024 ? 1024 : need + (need >> 1);
}

/** `weir_alloc(size)`: the batch's scratch space; the last batch's garbage is collected first. */
export function __weir_alloc(size: usize): usize {
  __collect();
  if (size > scratchCap) {
    scratchCap = capacity(size);
    scratch = fresh(scratch, scratchCap);
  }
  return scratch;
}

/**
 * Starts a result of `n` rows: `width` bytes a value, 0 for a bitmap
 * (BOOLEAN), -1 for variable length (VARCHAR, BYTEA). Returns the values buffer.
 */
export function __weir_begin(n: u32, width: i32): usize {
  const bitmap = (<usize>n + 7) >> 3;
  if (bitmap > validityCap) {
    validityCap = capacity(bitmap);
    validity = fresh(validity, validityCap);
  }
  memory.fill(validity, 0xff, bitmap);
  anyNull = false;
  flag = 0;
  failedCount = 0;
  failedUsed = 0;
  varLen = width < 0;
  let bytes: usize = width == 0 ? bitmap : width < 0 ? 0 : <usize>n * <usize>width;
  if (varLen) {
    const need = (<usize>n + 1) << 2;
    if (need > offsetsCap) {
      offsetsCap = capacity(need);
      offsets = fresh(offsets, offsetsCap);
    }
    store<i32>(offsets, 0);
    used = 0;
    bytes = <usize>n * 16;
  }
  if (bytes > valuesCap || values == 0) {
    valuesCap = capacity(bytes);
    values = fresh(values, valuesCap);
  }
  if (width == 0) memory.fill(values, 0, bitmap);
  return values;
}

/** Whether row `i` of a validity bitmap `v` (0: no NULLs) is a value. */
// @ts-ignore: decorator
@inline export function __weir_valid(v: usize, i: u32): bool {
  return v == 0 || ((load<u8>(v + (i >> 3)) >> (i & 7)) & 1) != 0;
}

/** Row `i` of a BOOLEAN argument's bitmap `d`. */
// @ts-ignore: decorator
@inline export function __weir_bool(d: usize, i: u32): bool {
  return ((load<u8>(d + (i >> 3)) >> (i & 7)) & 1) != 0;
}

/** Row `i` of a VARCHAR argument (values `d`, offsets `o`). */
export function __weir_str(d: usize, o: usize, i: u32): string {
  const start = load<i32>(o + (<usize>i << 2));
  const end = load<i32>(o + ((<usize>i + 1) << 2));
  return String.UTF8.decodeUnsafe(d + <usize>start, <usize>(end - start));
}

/** Row `i` of a BYTEA argument (values `d`, offsets `o`). */
export function __weir_bytes(d: usize, o: usize, i: u32): Uint8Array {
  const start = load<i32>(o + (<usize>i << 2));
  const end = load<i32>(o + ((<usize>i + 1) << 2));
  const out = new Uint8Array(end - start);
  memory.copy(out.dataStart, d + <usize>start, <usize>(end - start));
  return out;
}

/** The current row, for a `throw`'s report. */
// @ts-ignore: decorator
@inline export function __weir_at(i: u32): void {
  row = i;
}

/** What the UDF said of the row: 0 a value, 1 NULL, 2 failed. */
// @ts-ignore: decorator
@inline export function __weir_flag(): i32 {
  return flag;
}

/** Row `i` is NULL. */
export function __weir_null(i: u32): void {
  flag = 0;
  anyNull = true;
  const at = validity + (i >> 3);
  store<u8>(at, load<u8>(at) & ~(<u8>1 << <u8>(i & 7)));
  if (varLen) store<i32>(offsets + ((<usize>i + 1) << 2), <i32>used);
}

/** A BOOLEAN result `r` at row `i`. */
// @ts-ignore: decorator
@inline export function __weir_put_bool(i: u32, r: bool): void {
  if (r) {
    const at = values + (i >> 3);
    store<u8>(at, load<u8>(at) | (<u8>1 << <u8>(i & 7)));
  }
}

function reserve(more: usize): void {
  const need = used + more;
  if (need > valuesCap) {
    valuesCap = capacity(need);
    values = heap.realloc(values, valuesCap);
  }
}

/** A VARCHAR result at row `i`, as UTF-8 (an unpaired surrogate becomes U+FFFD). */
export function __weir_put_str(i: u32, s: string): void {
  // Short strings: room for the worst case (3 bytes a UTF-16 unit), then
  // one pass; long ones are measured first.
  const units = <usize>s.length;
  reserve(units <= 4096 ? units * 3 : <usize>String.UTF8.byteLength(s));
  used += String.UTF8.encodeUnsafe(changetype<usize>(s), <i32>units, values + used, false, String.UTF8.ErrorMode.REPLACE);
  store<i32>(offsets + ((<usize>i + 1) << 2), <i32>used);
}

/** A BYTEA result at row `i`. */
export function __weir_put_bytes(i: u32, b: Uint8Array): void {
  const len = <usize>b.length;
  reserve(len);
  memory.copy(values + used, b.dataStart, len);
  used += len;
  store<i32>(offsets + ((<usize>i + 1) << 2), <i32>used);
}

// `ptr` grown to at least `need` bytes, contents kept.
function grown(ptr: usize, need: usize): usize {
  return ptr == 0 ? heap.alloc(need) : heap.realloc(ptr, need);
}

/** Row `i` failed (after `fail`): NULL in the column, its message kept; the batch goes on and reports every failed row at once (ABI 1.1). */
export function __weir_row_failed(i: u32): void {
  __weir_null(i);
  const len = <usize>String.UTF8.byteLength(failMessage);
  if (failedUsed + len > failedTextCap) {
    failedTextCap = capacity(failedUsed + len);
    failedText = grown(failedText, failedTextCap);
  }
  String.UTF8.encodeUnsafe(changetype<usize>(failMessage), failMessage.length, failedText + failedUsed, false, String.UTF8.ErrorMode.REPLACE);
  const need = (<usize>failedCount + 1) * 12;
  if (need > failedRowsCap) {
    failedRowsCap = capacity(need);
    failedRows = grown(failedRows, failedRowsCap);
  }
  const at = failedRows + <usize>failedCount * 12;
  store<u32>(at, i);
  store<u32>(at, <u32>failedUsed, 4);
  store<u32>(at, <u32>len, 8);
  failedUsed += len;
  failedCount++;
}

/** The result descriptor of `n` rows. */
export function __weir_done(n: u32, width: i32): usize {
  store<u32>(RESULT, 0);
  store<u32>(RESULT, n, 4);
  store<u32>(RESULT, anyNull ? <u32>validity : 0, 8);
  store<u32>(RESULT, <u32>values, 12);
  const bytes: usize = width == 0 ? (<usize>n + 7) >> 3 : width < 0 ? used : <usize>n * <usize>width;
  store<u32>(RESULT, <u32>bytes, 16);
  store<u32>(RESULT, varLen ? <u32>offsets : 0, 20);
  store<u32>(RESULT, 0, 24);
  store<u32>(RESULT, 0, 28);
  store<u32>(RESULT, 0, 32);
  store<u32>(RESULT, 0, 36);
  if (failedCount > 0) {
    for (let k: u32 = 0; k < failedCount; k++) {
      const at = failedRows + <usize>k * 12 + 4;
      store<u32>(at, load<u32>(at) + <u32>failedText);
    }
    store<u32>(RESULT, 2);
    store<u32>(RESULT, failedCount, 24);
    store<u32>(RESULT, <u32>failedRows, 28);
  }
  return RESULT;
}

// `text` as UTF-8 in a block kept for the host to read; returns its length.
function message(text: string): usize {
  const len = <usize>String.UTF8.byteLength(text);
  if (len > messageCap) {
    messageCap = capacity(len);
    messageBuf = fresh(messageBuf, messageCap);
  }
  String.UTF8.encodeUnsafe(changetype<usize>(text), text.length, messageBuf, false, String.UTF8.ErrorMode.REPLACE);
  return len;
}

/** The descriptor of a row error at row `i` (after `fail`). */
export function __weir_failed(i: u32): usize {
  flag = 0;
  const len = message(failMessage);
  store<u32>(RESULT, 1);
  store<u32>(RESULT, 0, 4);
  store<u32>(RESULT, i, 24);
  store<u32>(RESULT, <u32>messageBuf, 28);
  store<u32>(RESULT, <u32>len, 32);
  store<u32>(RESULT, 0, 36);
  return RESULT;
}

/** AssemblyScript's `abort` (a `throw`, a failed assertion, an index out of range): recorded for `weir_panic_info`, then a trap. */
export function __weir_abort(msg: string | null, file: string | null, line: u32, column: u32): void {
  // Reporting allocates: an abort while reporting one just traps.
  if (aborting) unreachable();
  aborting = true;
  let text = msg !== null ? msg : "abort";
  if (file !== null) text += " (at " + file + ":" + line.toString() + ":" + column.toString() + ")";
  const len = message(text);
  store<u32>(PANIC, row);
  store<u32>(PANIC, <u32>messageBuf, 4);
  store<u32>(PANIC, <u32>len, 8);
  unreachable();
}

/** `weir_panic_info()`: why the last call trapped, when it was an abort. */
export function __weir_panic_info(): usize {
  return load<u32>(PANIC, 8) != 0 || load<u32>(PANIC, 4) != 0 ? PANIC : 0;
}
