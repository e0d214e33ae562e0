;; Threat: a 2 MiB string result where the output cap is 1 MiB. Expect: invalid output.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"utf8\"}\n")
  (memory (export "memory") 48)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param $args i32) (param $rows i32) (result i32)
    (local $i i32)
    ;; offsets at 4096: 0, 2 MiB, 2 MiB, ...
    (i32.store (i32.const 4096) (i32.const 0))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
      (i32.store (i32.add (i32.const 4100) (i32.shl (local.get $i) (i32.const 2))) (i32.const 0x200000))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=12 (i32.const 16) (i32.const 0x100000))
    (i32.store offset=16 (i32.const 16) (i32.const 0x200000))
    (i32.store offset=20 (i32.const 16) (i32.const 4096))
    (i32.const 16)))
