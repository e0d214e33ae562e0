;; Threat: return more rows than the batch has. Expect: invalid output.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    (i32.store offset=4 (i32.const 16) (i32.add (local.get $rows) (i32.const 1)))
    (i32.store offset=12 (i32.const 16) (i32.const 4096))
    (i32.store offset=16 (i32.const 16)
      (i32.shl (i32.add (local.get $rows) (i32.const 1)) (i32.const 3)))
    (i32.const 16)))
