;; Threat: offsets that go backwards. Expect: invalid output.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"utf8\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    ;; offsets at 4096: 0, 8, 2, 2, ...
    (memory.fill (i32.const 4096) (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4100) (i32.const 8))
    (i32.store (i32.const 4104) (i32.const 2))
    (i32.store (i32.const 4108) (i32.const 2))
    (i32.store (i32.const 4112) (i32.const 2))
    (i32.store (i32.const 4116) (i32.const 2))
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=12 (i32.const 16) (i32.const 8192))
    (i32.store offset=16 (i32.const 16) (i32.const 8))
    (i32.store offset=20 (i32.const 16) (i32.const 4096))
    (i32.const 16)))
