;; A broken version of `double` from tests/tenant/guest.wat: same manifest,
;; but every call traps. A circuit breaker must open on it and hold the
;; pipeline until a fixed version is in effect.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"double\",\"args\":[\"int64\"],\"ret\":\"int64\",\"deterministic\":true}\n")
  (memory (export "memory") 2)
  (func (export "weir_alloc") (param $size i32) (result i32)
    (i32.const 65536))
  (func (export "double") (param $args i32) (param $rows i32) (result i32)
    unreachable))
