//! Helpers for the services' hand-built OpenAPI descriptions.

use serde_json::Value;

/// Adds `responses` (status, response object) to every operation of `doc`'s `paths`: the
/// refusals every route shares (the listener layers' 408 and 413, an internal key's 401, ...),
/// so each description lists every status a route can answer.
pub fn add_to_every_operation(doc: &mut Value, responses: &[(&str, Value)]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut().filter_map(Value::as_object_mut) {
        // A path item also holds its shared `parameters`, `summary`, ...: no `responses` there.
        for operation in item.values_mut() {
            let Some(listed) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses {
                listed.insert((*status).to_owned(), response.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_operation_gets_the_responses_and_nothing_else_changes() {
        let mut doc = json!({ "paths": {
            "/a": { "parameters": [{ "name": "x" }],
                    "get": { "responses": { "200": {} } },
                    "post": { "responses": { "201": {} } } },
            "/b": { "delete": { "responses": { "204": {} } } }
        }});
        add_to_every_operation(&mut doc, &[("413", json!({ "description": "big" }))]);
        for (path, method, ok) in [
            ("/a", "get", "200"),
            ("/a", "post", "201"),
            ("/b", "delete", "204"),
        ] {
            let listed = &doc["paths"][path][method]["responses"];
            assert!(listed.get(ok).is_some() && listed["413"]["description"] == "big");
        }
        assert_eq!(doc["paths"]["/a"]["parameters"], json!([{ "name": "x" }]));
    }
}
