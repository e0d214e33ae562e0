;; Threat: ptr + len that wraps around 2^32 back into memory. Expect: invalid output.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"utf8\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=12 (i32.const 16) (i32.const 0xfffffff0))
    (i32.store offset=16 (i32.const 16) (i32.const 0x20))
    (i32.store offset=20 (i32.const 16) (i32.const 4096))
    (i32.const 16)))
