;; Benchmark floor: returns its first float64 argument's buffers unchanged,
;; so a call costs only the host's copies in and out and the call itself.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"first\",\"args\":[\"float64\",\"float64\"],\"ret\":\"float64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param $size i32) (result i32)
    (local $need i32)
    (local.set $need (i32.add (i32.const 65536) (local.get $size)))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $need) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 65536))
  (func (export "first") (param $args i32) (param $rows i32) (result i32)
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=8 (i32.const 16) (i32.load offset=0 (local.get $args)))
    (i32.store offset=12 (i32.const 16) (i32.load offset=4 (local.get $args)))
    (i32.store offset=16 (i32.const 16) (i32.load offset=8 (local.get $args)))
    (i32.const 16)))
