//! The server's answers checked against docs/openapi.json: the subset of
//! JSON Schema that file uses (`type`, one or a list, `maxLength`, `enum`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `minItems`, `maxItems`, and
//! `$ref` within the file). A keyword outside that subset fails the check
//! rather than passing unread.

use serde_json::Value;

pub struct OpenApi(Value);

const KNOWN: &[&str] = &[
    "type",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "maxLength",
    "minimum",
    "description",
    "$ref",
];

impl OpenApi {
    /// docs/openapi.json, as the repository has it.
    pub fn load() -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(serde_json::from_str(&text).expect("docs/openapi.json is JSON"))
    }

    /// The JSON schema of the answer to `method path` with `status`.
    pub fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let op = &self.0["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "docs/openapi.json has no {method} {path}");
        let r = self.resolve(&op["responses"][status.to_string()]);
        assert!(r.is_object(), "docs/openapi.json has no {status} answer for {method} {path}");
        &r["content"]["application/json"]["schema"]
    }

    /// Every way `value` breaks `schema`, each with where.
    pub fn violations(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(schema, value, "", &mut out);
        out
    }

    /// `value`, answered to `method path` with `status`, is as documented.
    pub fn assert_answer(&self, method: &str, path: &str, status: u16, value: &Value) {
        let v = self.violations(self.response(method, path, status), value);
        assert!(v.is_empty(), "{method} {path} {status} is not as docs/openapi.json says: {v:?}\n{value}");
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/")) {
            Some(pointer) => self.resolve(self.0.pointer(&format!("/{pointer}")).unwrap_or(&Value::Null)),
            None => v,
        }
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        if schema.get("$ref").and_then(Value::as_str).is_some_and(|r| !r.starts_with("#/")) {
            return; // Another file's schema (the send job's): not an answer's.
        }
        let schema = self.resolve(schema);
        let Some(keywords) = schema.as_object() else {
            out.push(format!("{at}: no schema"));
            return;
        };
        if let Some(k) = keywords.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            panic!("{at}: the checker does not read `{k}`; teach it before using it");
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() {
            let is = |t: &str| match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                other => panic!("{at}: type {other} not handled"),
            };
            if !types.iter().any(|t| is(t)) {
                out.push(format!("{at}: not a {}: {value}", types.join(" or ")));
                return;
            }
        }
        if let (Some(max), Some(text)) = (schema.get("maxLength").and_then(Value::as_u64), value.as_str())
            && text.chars().count() as u64 > max
        {
            out.push(format!("{at}: longer than {max}"));
        }
        if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_i64), value.as_i64())
            && n < min
        {
            out.push(format!("{at}: {n} is under the minimum {min}"));
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            out.push(format!("{at}: {value} is none of {options:?}"));
        }
        if let Some(obj) = value.as_object() {
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !obj.contains_key(r) {
                    out.push(format!("{at}: `{r}` missing"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            for (k, v) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => self.check(s, v, &format!("{at}/{k}"), out),
                    None if closed => out.push(format!("{at}: `{k}` is not documented")),
                    None => {}
                }
            }
        }
        if let Some(items) = value.as_array() {
            let n = items.len() as u64;
            if schema.get("minItems").and_then(Value::as_u64).is_some_and(|min| n < min) {
                out.push(format!("{at}: {n} items, under minItems"));
            }
            if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|max| n > max) {
                out.push(format!("{at}: {n} items, over maxItems"));
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    self.check(s, v, &format!("{at}/{i}"), out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_checker_finds_what_an_answer_gets_wrong() {
        let api = OpenApi::load();
        let ok = json!({"accepted": 1, "rejected": 1, "results": [
            {"index": 0, "job_id": "j", "status": "accepted"},
            {"index": 1, "status": "rejected", "reason": "malformed", "detail": "x"}]});
        assert_eq!(api.violations(api.response("POST", "/api/v1/messages", 202), &ok), Vec::<String>::new());
        let bad = json!({"accepted": "1", "results": [{"index": 0, "status": "queued", "extra": true}]});
        let v = api.violations(api.response("POST", "/api/v1/messages", 202), &bad);
        assert_eq!(v.len(), 4, "{v:?}");
        let v = api.violations(api.response("POST", "/api/v1/messages", 401), &json!({"message": "x"}));
        assert_eq!(v.len(), 2, "{v:?}");
        let versions = api.response("GET", "/api/v1/templates/{campaign_id}/{template_id}/versions", 200);
        let zero =
            json!({"campaign_id": "c", "template_id": "t", "versions": [{"version": 0, "registered_at": 1}]});
        assert_eq!(api.violations(versions, &zero).len(), 1, "a version under its minimum");
    }
}
