;; Tenant tests' guest (docs/abi.md): int64 functions
;;   double(x) = 2x          deterministic (cacheable)
;;   spin(n)   = n           loops n times per row (CPU)
;;   grow(n)   = old pages   grows memory by the first row's n pages once per
;;                           call (memory): row 0 is memory.grow's result (the
;;                           old size in pages, or -1 when refused), the other
;;                           rows the size in pages afterwards
;;   noisy(x)  = 2x          like double, declared non-deterministic
;;   work(x)   = mix(x)      10 000 rounds of an LCG per row: an expensive
;;                           deterministic function (cache benchmark)
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"double\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":true}\n{\"abi\":1,\"name\":\"spin\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":false}\n{\"abi\":1,\"name\":\"grow\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":false}\n{\"abi\":1,\"name\":\"noisy\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":false}\n{\"abi\":1,\"name\":\"work\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":true}\n")

  (memory (export "memory") 2)
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

  (func $times2 (param $args i32) (param $rows i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (call $set (local.get $i)
          (i64.mul (call $in (local.get $args) (local.get $i)) (i64.const 2)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $result (local.get $args) (local.get $rows)))

  (func (export "double") (param $args i32) (param $rows i32) (result i32)
    (call $times2 (local.get $args) (local.get $rows)))

  (func (export "noisy") (param $args i32) (param $rows i32) (result i32)
    (call $times2 (local.get $args) (local.get $rows)))

  (func (export "spin") (param $args i32) (param $rows i32) (result i32)
    (local $i i32) (local $n i64) (local $k i64)
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
    (call $result (local.get $args) (local.get $rows)))

  (func (export "grow") (param $args i32) (param $rows i32) (result i32)
    (local $i i32)
    (if (i32.gt_u (local.get $rows) (i32.const 0))
      (then
        (call $set (i32.const 0)
          (i64.extend_i32_s
            (memory.grow (i32.wrap_i64 (call $in (local.get $args) (i32.const 0))))))
        (local.set $i (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (call $set (local.get $i) (i64.extend_i32_u (memory.size)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $result (local.get $args) (local.get $rows)))

  (func (export "work") (param $args i32) (param $rows i32) (result i32)
    (local $i i32) (local $x i64) (local $k i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (local.set $x (call $in (local.get $args) (local.get $i)))
        (local.set $k (i32.const 0))
        (block $mixed
          (loop $again
            (br_if $mixed (i32.ge_u (local.get $k) (i32.const 10000)))
            (local.set $x (i64.add (i64.mul (local.get $x) (i64.const 6364136223846793005))
                                   (i64.const 1442695040888963407)))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $again)))
        (call $set (local.get $i) (local.get $x))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $result (local.get $args) (local.get $rows)))
)
