;; Threat: a guest writes a newline and a fake server log line through
;; `weir.log`, to forge entries in the operator's log. Expect: one line,
;; the control characters escaped.
(module
  (import "weir" "log" (func $log (param i32 i32)))
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (data (i32.const 2048) "ok\n2026-11-28T00:00:00Z ERROR weir: forged\1b[2J")
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    (call $log (i32.const 2048) (i32.const 46))
    ;; The result descriptor at 4096: status 0, len = rows, the input's values.
    (i32.store (i32.const 4096) (i32.const 0))
    (i32.store (i32.const 4100) (local.get $rows))
    (i32.store (i32.const 4104) (i32.const 0))
    (i32.store (i32.const 4108) (i32.load offset=4 (local.get $args)))
    (i32.store (i32.const 4112) (i32.load offset=8 (local.get $args)))
    (i32.store (i32.const 4116) (i32.const 0))
    (i32.const 4096)))
