;; Threat: declare 4 GiB of initial memory. Expect: refused at load.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 65536)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param i32 i32) (result i32) (i32.const 0)))
