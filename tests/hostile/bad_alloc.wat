;; Threat: weir_alloc hands the host a region outside memory. Expect: invalid output.
(module
  (@custom "weir.udf" "{\"abi\":1,\"name\":\"f\",\"args\":[\"int64\"],\"ret\":\"int64\"}\n")
  (memory (export "memory") 1)
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 0x7ffffff8))
  (func (export "f") (param i32 i32) (result i32) (i32.const 0)))
