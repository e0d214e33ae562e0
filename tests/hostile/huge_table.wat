;; Threat: a table of ten million entries. Expect: refused at load (table limit).
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (table 10000000 funcref)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "f") (param i32 i32) (result i32) (i32.const 0)))
