;; Threat: an aggregate whose state column has the wrong length (claims 1 row more than groups). Expect: invalid output naming the column.
(module
  (@custom "weir.udf" "{\"abi\":1,\"kind\":\"aggregate\",\"name\":\"bad_state\",\"args\":[\"float64\"],\"ret\":\"float64\",\"state\":[\"float64\"]}\n")
  (memory (export "memory") 4)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 131072))

  ;; rows folded into the f64 sums at 65536 + 8 * group
  (func $fold (param $p i32) (param $n i32)
    (local $i i32) (local $ids i32) (local $vals i32) (local $valid i32) (local $at i32)
    (local.set $ids (i32.load offset=4 (local.get $p)))
    (local.set $valid (i32.load offset=16 (local.get $p)))
    (local.set $vals (i32.load offset=20 (local.get $p)))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.or (i32.eqz (local.get $valid))
              (i32.and (i32.load8_u (i32.add (local.get $valid) (i32.shr_u (local.get $i) (i32.const 3))))
                       (i32.shl (i32.const 1) (i32.and (local.get $i) (i32.const 7)))))
          (then
            
            (local.set $at (i32.add (i32.const 65536)
              (i32.shl (i32.load (i32.add (local.get $ids) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 3))))
            (f64.store (local.get $at)
              (f64.add (f64.load (local.get $at))
                (f64.load (i32.add (local.get $vals) (i32.shl (local.get $i) (i32.const 3))))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $rows))))

  ;; groups 0..n as one f64 column (descriptor at 1024); with consume, the
  ;; rest move down
  (func $emit (param $n i32) (param $consume i32) (result i32)
    (memory.copy (i32.const 2048) (i32.const 65536) (i32.shl (local.get $n) (i32.const 3)))
    (if (local.get $consume)
      (then
        (memory.copy (i32.const 65536) (i32.add (i32.const 65536) (i32.shl (local.get $n) (i32.const 3)))
          (i32.sub (i32.const 65536) (i32.shl (local.get $n) (i32.const 3))))))
    (i32.store (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (local.get $n))
    (i32.store (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1036) (i32.const 2048))
    (i32.store (i32.const 1040) (i32.shl (local.get $n) (i32.const 3)))
    (i32.const 1024))

  (func (export "bad_state__update") (param i32 i32 i32) (result i32)
    
    (call $fold (local.get 0) (local.get 1)) (i32.const 1000))
  (func (export "bad_state__merge") (param i32 i32 i32) (result i32)
    (call $fold (local.get 0) (local.get 1)) (i32.const 1000))
  (func (export "bad_state__state") (param i32 i32) (result i32)
    (drop (call $emit (local.get 0) (local.get 1))) (i32.store (i32.const 1028) (i32.add (local.get 0) (i32.const 1))) (i32.const 1024))
  (func (export "bad_state__evaluate") (param i32 i32) (result i32)
    (call $emit (local.get 0) (local.get 1))))
