//! Reading a tool call's `arguments` object: typed getters whose errors are the text the model
//! gets back (`missing required argument "path"`).

use serde_json::{Map, Value};

/// The `arguments` object of one tool call.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    /// Wraps `value`, which must be an object (`null` counts as `{}`).
    pub fn new(value: &'a Value, empty: &'a Map<String, Value>) -> Result<Args<'a>, String> {
        match value {
            Value::Object(map) => Ok(Args { map }),
            Value::Null => Ok(Args { map: empty }),
            other => Err(format!("the arguments must be a JSON object, got {other}")),
        }
    }

    /// A present, non-null value.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn string(&self, name: &str) -> Result<&'a str, String> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!("argument \"{name}\" must be a string, got {other}")),
            None => Err(format!("missing required argument \"{name}\"")),
        }
    }

    /// An optional string.
    pub fn opt_string(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("argument \"{name}\" must be a string, got {other}")),
            None => Ok(None),
        }
    }

    /// An optional boolean with a default.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format!(
                "argument \"{name}\" must be a boolean, got {other}"
            )),
            None => Ok(default),
        }
    }

    /// An optional non-negative integer.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.get(name) {
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                format!("argument \"{name}\" must be a non-negative integer, got {value}")
            }),
            None => Ok(None),
        }
    }
}
