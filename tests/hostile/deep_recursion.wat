;; Threat: unbounded recursion. Expect: stack overflow, host thread unharmed.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func $down (param i64) (result i64)
    (i64.add (call $down (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "f") (param i32 i32) (result i32)
    (drop (call $down (i64.const 0)))
    (i32.const 0)))
