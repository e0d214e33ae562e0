;; A weir UDF written by hand in WebAssembly text, without the Rust SDK:
;; celsius_to_fahrenheit(float64) -> float64, NULL in -> NULL out.
;; It follows docs/abi.md only.
(module
  ;; The manifest: one JSON line per function.
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"celsius_to_fahrenheit\",\"args\":[\"float64\"],\"ret\":\"float64\",\"deterministic\":true}\n")

  (memory (export "memory") 2)

  ;; Layout: the result descriptor at 16, the host's scratch region from
  ;; 64 KiB, this function's output right after the scratch region.
  (global $scratch i32 (i32.const 65536))
  (global $out (mut i32) (i32.const 65536))

  ;; weir_alloc(size) -> ptr: grow memory so that the scratch region and an
  ;; output of the same size fit, then hand out the scratch region.
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

  ;; celsius_to_fahrenheit(args, rows) -> result descriptor
  (func (export "celsius_to_fahrenheit") (param $args i32) (param $rows i32) (result i32)
    (local $in i32) (local $i i32)
    ;; argument 0: validity at +0, values at +4
    (local.set $in (i32.load offset=4 (local.get $args)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $rows)))
        (f64.store
          (i32.add (global.get $out) (i32.shl (local.get $i) (i32.const 3)))
          (f64.add
            (f64.mul
              (f64.load (i32.add (local.get $in) (i32.shl (local.get $i) (i32.const 3))))
              (f64.const 1.8))
            (f64.const 32)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    ;; result: status 0, len, validity = the input's (NULL in -> NULL out),
    ;; values, values_len, offsets 0, error fields 0
    (i32.store offset=0 (i32.const 16) (i32.const 0))
    (i32.store offset=4 (i32.const 16) (local.get $rows))
    (i32.store offset=8 (i32.const 16) (i32.load offset=0 (local.get $args)))
    (i32.store offset=12 (i32.const 16) (global.get $out))
    (i32.store offset=16 (i32.const 16) (i32.shl (local.get $rows) (i32.const 3)))
    (i32.store offset=20 (i32.const 16) (i32.const 0))
    (i32.const 16))
)
