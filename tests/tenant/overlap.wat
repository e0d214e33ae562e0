;; Concurrency probe for the tenant tests (docs/abi.md): an int64 function
;;   spin(n) = n   loops n times per row (CPU), like guest.wat's `spin`, but
;;                 logs `enter` (capability `log`) before its work and `leave`
;;                 after it, so a test sees from the guest's side how many
;;                 calls were running at once.
(module
  (import "weir" "log" (func $log (param i32 i32)))
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"spin\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":false}\n")

  (memory (export "memory") 2)
  (data (i32.const 1024) "enter")
  (data (i32.const 1040) "leave")
  (global $scratch i32 (i32.const 65536))
  (global $out (mut i32) (i32.const 65536))

  (func (export "weir_alloc") (param $size i32) (result i32)
    (local $need i32)
    (global.set $out
      (i32.and (i32.add (i32.add (global.get $scratch) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.set $need (i32.add (global.get $out) (local.get $size)))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub
                  (i32.shr_u (i32.add (local.get $need) (i32.const 65535)) (i32.const 16))
                  (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.get $scratch))

  ;; Result descriptor at 16: status, len, validity (the input's), values.
  (func $result (param $args i32) (param $rows i32) (result i32)
    (i32.store offset=0 (i32.const 16) (i32.const 0))
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=8 (i32.const 16) (i32.load offset=0 (local.get $args)))
    (i32.store offset=12 (i32.const 16) (global.get $out))
    (i32.store offset=16 (i32.const 16) (i32.shl (local.get $rows) (i32.const 3)))
    (i32.store offset=20 (i32.const 16) (i32.const 0))
    (i32.const 16))

  (func $in (param $args i32) (param $i i32) (result i64)
    (i64.load (i32.add (i32.load offset=4 (local.get $args)) (i32.shl (local.get $i) (i32.const 3)))))

  (func $set (param $i i32) (param $v i64)
    (i64.store (i32.add (global.get $out) (i32.shl (local.get $i) (i32.const 3))) (local.get $v)))

  (func (export "spin") (param $args i32) (param $rows i32) (result i32)
    (local $i i32) (local $n i64) (local $k i64)
    (call $log (i32.const 1024) (i32.const 5))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (local.set $n (call $in (local.get $args) (local.get $i)))
        (local.set $k (i64.const 0))
        (block $spun
          (loop $again
            (br_if $spun (i64.ge_s (local.get $k) (local.get $n)))
            (local.set $k (i64.add (local.get $k) (i64.const 1)))
            (br $again)))
        (call $set (local.get $i) (local.get $k))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $log (i32.const 1040) (i32.const 5))
    (call $result (local.get $args) (local.get $rows)))
)
