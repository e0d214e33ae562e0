;; Not a threat: exposes the bit pattern of 0/0. Deterministic functions run
;; with NaN canonicalization, so the bits are the same on every machine.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"float64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    (local $x f64)
    (local.set $x (f64.load (i32.load offset=4 (local.get $args))))
    (i64.store (i32.const 4096) (i64.reinterpret_f64 (f64.div (local.get $x) (local.get $x))))
    (i32.store offset=4 (i32.const 16) (i32.const 1))
    (i32.store offset=12 (i32.const 16) (i32.const 4096))
    (i32.store offset=16 (i32.const 16) (i32.const 8))
    (i32.const 16)))
