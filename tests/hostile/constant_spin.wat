;; Threat: a deterministic function that never returns, called over
;; literals (`SELECT spin(1)`): DataFusion folds it in every optimizer pass
;; and keeps it for execution when folding fails, each attempt with a fresh
;; CPU budget. Expect: one call, out of CPU, the query fails once.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"spin\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":true}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "spin") (param i32 i32) (result i32)
    (loop $spin (br $spin))
    (i32.const 0)))
