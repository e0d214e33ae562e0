;; Threat: a start function that never returns, run at instantiation.
;; Expect: refused at load, out of CPU in the start function.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func $start (loop $spin (br $spin)))
  (start $start)
  (func (export "f") (param i32 i32) (result i32) (i32.const 0)))
