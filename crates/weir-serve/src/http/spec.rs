//! What the route table's annotations leave out of the OpenAPI document,
//! added in one place so that a client generator (and schemathesis, in CI)
//! can use it: the bearer scheme on `/v1`, the error body and the statuses
//! every `/v1` route can answer (400, 401, 404, 413, 429), patterns of the
//! path parameters, the JSON request bodies' schemas, the wasm and TOML
//! bodies as bytes and text, and unique operation ids.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

const TENANT: &str = "^[A-Za-z0-9_-]{1,64}$";
const NAME: &str = "^[a-z0-9_-]{1,64}$";
const PIPELINE: &str = "^[A-Za-z0-9_-]{1,64}$";
const VERSION: &str = "^([1-9][0-9]{0,17}|latest)$";
const NUMBERED_VERSION: &str = "^[1-9][0-9]{0,17}$";

/// The document with everything above added.
pub fn complete(doc: OpenApi) -> OpenApi {
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    complete_value(&mut v);
    serde_json::from_value(v).unwrap_or(doc)
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn complete_value(doc: &mut Value) {
    let components = doc
        .as_object_mut()
        .map(|d| d.entry("components").or_insert_with(|| json!({})));
    if let Some(Value::Object(c)) = components {
        c.entry("schemas")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|s| {
                s.insert(
                    "Error".into(),
                    json!({
                        "type": "object",
                        "required": ["error"],
                        "properties": {"error": {"type": "string", "description": "what went wrong and what to change"}}
                    }),
                )
            });
        c.entry("securitySchemes")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|s| {
                s.insert(
                    "bearer".into(),
                    json!({"type": "http", "scheme": "bearer", "description": "a token of `[[serve.tokens]]` or one created through the API"}),
                )
            });
    }
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Value::Object(item) = item else { continue };
        for (method, op) in item.iter_mut() {
            let Value::Object(op) = op else { continue };
            complete_operation(path, method, op);
            if let Some(Value::String(id)) = op.get("operationId").cloned() {
                *seen_ids.entry(id).or_default() += 1;
            }
        }
    }
    // Operation ids are function names; several resources have a `list`.
    for item in paths.values_mut() {
        let Value::Object(item) = item else { continue };
        for op in item.values_mut() {
            let Value::Object(op) = op else { continue };
            let (Some(Value::String(id)), Some(tag)) = (
                op.get("operationId").cloned(),
                op.get("tags")
                    .and_then(|t| t.get(0))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ) else {
                continue;
            };
            if seen_ids.get(&id).is_some_and(|n| *n > 1) {
                op.insert("operationId".into(), json!(format!("{tag}_{id}")));
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let v1 = path.starts_with("/v1");
    if let Some(Value::Array(params)) = op.get_mut("parameters") {
        for p in params.iter_mut() {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let pattern = match name.as_str() {
                "tenant" => Some(TENANT),
                "version" if method == "delete" => Some(NUMBERED_VERSION),
                "version" => Some(VERSION),
                "name" if path.contains("/pipelines/") => Some(PIPELINE),
                "name" => Some(NAME),
                _ => None,
            };
            if let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) {
                if let Some(pattern) = pattern {
                    schema.insert("pattern".into(), json!(pattern));
                }
                if name == "limit" {
                    // Values above 10 000 are served as 10 000.
                    schema.insert("minimum".into(), json!(0));
                    schema.insert("maximum".into(), json!(1_000_000_000));
                    schema.insert("type".into(), json!("integer"));
                    schema.remove("format");
                }
            }
        }
    }
    if let Some(schema) = body_schema(path, method) {
        let ctype = match schema {
            Body::Json(_) => "application/json",
            Body::Wasm => "application/wasm",
            Body::Toml => "application/toml",
        };
        let schema = match schema {
            Body::Json(s) => s,
            Body::Wasm => json!({"type": "string", "format": "binary"}),
            Body::Toml => {
                json!({"type": "string", "description": "the pipeline file (docs/pipelines.md)"})
            }
        };
        let description = op
            .get("requestBody")
            .and_then(|b| b.get("description"))
            .cloned()
            .unwrap_or(json!(""));
        op.insert(
            "requestBody".into(),
            json!({
                "description": description,
                "required": true,
                "content": {ctype: {"schema": schema}}
            }),
        );
    }
    let has_body = op.contains_key("requestBody");
    let Some(Value::Object(responses)) = op.get_mut("responses") else {
        return;
    };
    if v1 {
        let mut add = |code: &str, description: &str| {
            responses
                .entry(code.to_string())
                .or_insert_with(|| error_response(description));
        };
        add(
            "400",
            "a malformed request: tenant, name, version or parameter",
        );
        add("401", "no bearer token, or an unknown one");
        add(
            "429",
            "the token's request rate (`serve.requests_per_s`) is spent",
        );
        add(
            "503",
            "the cluster's shared database (`serve.database`) does not answer: retry",
        );
        if path.contains("{tenant}") || path == "/v1/audit" {
            add(
                "404",
                "not found, or another tenant's (answered as if absent)",
            );
        }
        if has_body {
            add("413", "the body is over `serve.max_body_bytes`");
        }
    }
    for (code, response) in responses.iter_mut() {
        if code.starts_with('2') {
            continue;
        }
        if let Value::Object(r) = response
            && !r.contains_key("content")
        {
            r.insert(
                "content".into(),
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}),
            );
        }
    }
    if v1 {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
}

enum Body {
    Json(Value),
    Wasm,
    Toml,
}

/// The request body of an operation, by path and method.
fn body_schema(path: &str, method: &str) -> Option<Body> {
    let rows = json!({
        "type": "array",
        "maxItems": weir_core::udf::staged::MAX_ROWS,
        "items": {"type": "array", "description": "the function's arguments, in order"},
        "description": "sample rows, each an array of argument values (JSON null for NULL)"
    });
    let function = json!({"type": "string", "description": "a function the module declares"});
    Some(match (method, path) {
        ("post", "/v1/tenants/{tenant}/udfs/{name}") => Body::Wasm,
        ("put", "/v1/tenants/{tenant}/pipelines/{name}") => Body::Toml,
        ("post", "/v1/tenants/{tenant}/sql") => Body::Json(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["sql"],
            "properties": {
                "sql": {"type": "string", "description": "one read-only query, optionally after `CREATE FUNCTION … LANGUAGE javascript|python AS $$ … $$;` statements that add functions to this request only"},
                "udfs": {
                    "type": "array",
                    "maxItems": crate::pipeline::PipelineConfig::MAX_UDFS,
                    "uniqueItems": true,
                    "items": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}(@[1-9][0-9]{0,17})?$"},
                    "description": "published UDFs to register: `name` (latest) or `name@N`"
                },
                "tables": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "object"}, "maxItems": 100_000},
                    "description": "inline tables: name → rows (JSON objects); the schema is inferred (rows whose values cannot form one table are refused with 422)"
                },
                "topics": {
                    "type": "object",
                    "maxProperties": crate::services::query::MAX_TOPICS,
                    "description": "tables of a topic's most recent records (at most 4, read within the query's deadline, counted against the tenant's query_memory_bytes)",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["brokers", "topic", "format"],
                        "properties": {
                            "brokers": {"type": "string"},
                            "topic": {"type": "string"},
                            "format": {"type": "string", "enum": ["json", "csv", "raw"]},
                            "fields": {"type": "array", "items": {
                                "type": "object",
                                "additionalProperties": false,
                                "required": ["name", "type"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "type": {"type": "string"},
                                    "nullable": {"type": "boolean"}
                                }
                            }},
                            "metadata": {"type": "array", "items": {"type": "string", "enum": ["key", "partition", "offset", "timestamp", "headers"]}},
                            "last": {"type": "integer", "description": "records per partition, from the end (1 to 10000)"}
                        }
                    }
                },
                "max_rows": {"type": "integer", "minimum": 0, "description": "rows returned at most (≤ 10000)"}
            }
        })),
        ("post", "/v1/tenants/{tenant}/tokens") => Body::Json(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "role"],
            "properties": {
                "name": {"type": "string", "pattern": NAME},
                "role": {"type": "string", "enum": ["viewer", "operator", "publisher", "admin"]}
            }
        })),
        ("post", "/v1/tenants/{tenant}/udfs/{name}/versions/{version}/try") => Body::Json(json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["function", "rows"],
            "properties": {"function": function, "rows": rows}
        })),
        ("post", "/v1/tenants/{tenant}/try") => Body::Json(json!({
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["function", "rows", "module_base64"],
                    "properties": {
                        "function": function, "rows": rows,
                        "module_base64": {"type": "string", "format": "byte", "description": "a binary module"}
                    }
                },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["function", "rows", "module_text"],
                    "properties": {
                        "function": function, "rows": rows,
                        "module_text": {"type": "string", "description": "a module in the WebAssembly text format"}
                    }
                }
            ]
        })),
        _ => return None,
    })
}
