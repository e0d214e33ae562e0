;; Threat: an endless loop made of calls (no loop instruction). Expect: out of CPU.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func $ping (param i32) (result i32) (return_call $pong (local.get 0)))
  (func $pong (param i32) (result i32) (return_call $ping (local.get 0)))
  (func (export "f") (param i32 i32) (result i32)
    (call $ping (local.get 0))))
