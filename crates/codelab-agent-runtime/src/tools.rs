//! The tool registry: the original's exact JSON-schema parameters for the six IDE tools
//! and our server-side tools, the definitions offered to each agent, and the
//! validation of the arguments a model sends.
//!
//! Arguments are validated before anything reaches the IDE and are then relayed exactly as
//! the model sent them: the schemas' `default`s document the IDE's behaviour and are never
//! filled in here.

use std::collections::HashMap;
use std::sync::LazyLock;

use codelab_protocol::openai::{FunctionDefinition, ToolDefinition};
use jsonschema::Validator;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::{Value, json};

use crate::agents::{AgentKind, tools_of};

/// Where a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolLocation {
    /// Sent to the IDE as a `tool_call`; its result comes back as `tool_result`.
    Ide,
    /// Handled inside the runtime (`switch_mode`, `attempt_completion`, ...).
    Server,
}

/// One registered tool.
#[derive(Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub location: ToolLocation,
    /// The JSON schema of the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    /// The OpenAI `{"type":"function","function":{...}}` definition.
    pub fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            kind: "function".to_owned(),
            function: FunctionDefinition {
                name: self.name.to_owned(),
                description: Some(self.description.to_owned()),
                parameters: Some(self.parameters.clone()),
            },
        }
    }
}

/// Names of the tools the IDE executes, in registry order.
pub use codelab_protocol::ide::IDE_TOOLS;

/// IDE tools that only read the workspace. Every other IDE tool (and any name not known
/// here) is treated as changing it, so a new tool needs approval until a rule says otherwise.
pub const READ_ONLY_IDE_TOOLS: [&str; 4] =
    ["read_file", "list_files", "search_in_code", "search_files"];

/// Names of the tools the runtime handles itself.
pub const SERVER_TOOLS: [&str; 4] = [
    "switch_mode",
    "attempt_completion",
    "ask_followup_question",
    "create_plan",
];

static REGISTRY: LazyLock<Vec<ToolSpec>> = LazyLock::new(build_registry);

/// Compiled once: validating a call must not recompile its schema.
static VALIDATORS: LazyLock<HashMap<&'static str, Validator>> = LazyLock::new(|| {
    REGISTRY
        .iter()
        .map(|tool| {
            let validator = jsonschema::draft7::new(&tool.parameters)
                .expect("the built-in tool schemas are valid draft-7 schemas (tested)");
            (tool.name, validator)
        })
        .collect()
});

/// Every tool, in registry order (the order definitions are offered in).
pub fn all() -> &'static [ToolSpec] {
    &REGISTRY
}

/// A registered tool by name.
pub fn get(name: &str) -> Option<&'static ToolSpec> {
    REGISTRY.iter().find(|t| t.name == name)
}

/// Whether the runtime handles this tool itself (never sent to the IDE).
pub fn is_server_side(name: &str) -> bool {
    SERVER_TOOLS.contains(&name)
}

/// Whether a call of this tool can change the user's workspace or machine (anything but the
/// read-only IDE tools and the runtime's own tools).
pub fn changes_workspace(name: &str) -> bool {
    !READ_ONLY_IDE_TOOLS.contains(&name) && !is_server_side(name)
}

/// Whether the IDE executes this tool.
pub fn is_ide_tool(name: &str) -> bool {
    IDE_TOOLS.contains(&name)
}

/// The tool definitions offered to an agent, in the agent's order (none for the orchestrator).
pub fn definitions_for(agent: AgentKind) -> Vec<ToolDefinition> {
    tools_of(agent)
        .iter()
        .filter_map(|name| get(name))
        .map(ToolSpec::definition)
        .collect()
}

/// Checks a model's raw `arguments` string for `name`: it must be a JSON object matching the
/// tool's schema. Returns the parsed object exactly as sent (no defaults filled in), or an
/// error meant for the model, e.g. `write_file: missing required property "content"`.
///
/// An empty string is read as `{}` (some models send it for argument-less calls).
pub fn validate_arguments(name: &str, raw_arguments: &str) -> Result<Value, String> {
    let Some(validator) = VALIDATORS.get(name) else {
        let known = REGISTRY
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!("unknown tool \"{name}\" (known tools: {known})"));
    };
    let raw = raw_arguments.trim();
    let value: Value = if raw.is_empty() {
        json!({})
    } else {
        serde_json::from_str(raw)
            .map_err(|e| format!("{name}: the arguments are not valid JSON ({e})"))?
    };
    if !value.is_object() {
        return Err(format!(
            "{name}: the arguments must be a JSON object, got {}",
            json_kind(&value)
        ));
    }
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|error| {
            describe(
                error.kind(),
                error.instance_path().as_str(),
                error.instance(),
                &error.to_string(),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!("{name}: {}", errors.join("; ")))
    }
}

/// One validation error in words a model can act on.
fn describe(kind: &ValidationErrorKind, pointer: &str, instance: &Value, fallback: &str) -> String {
    let property = property_name(pointer);
    match kind {
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            format!("missing required property \"{name}\"")
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!(
                "property {property} must be of type {expected}, got {}",
                json_kind(instance)
            )
        }
        ValidationErrorKind::Enum { options } => {
            let allowed = options
                .as_array()
                .map(|values| {
                    values
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| options.to_string());
            format!("property {property} must be one of {allowed}, got {instance}")
        }
        ValidationErrorKind::Minimum { limit } => {
            format!("property {property} must be at least {limit}, got {instance}")
        }
        ValidationErrorKind::MinItems { limit } => {
            format!("property {property} must have at least {limit} items")
        }
        ValidationErrorKind::MaxItems { limit } => {
            format!("property {property} must have at most {limit} items")
        }
        _ => format!("property {property}: {fallback}"),
    }
}

/// `"/suggestions/0"` → `"suggestions/0"` in quotes; the root is named as such.
fn property_name(pointer: &str) -> String {
    match pointer.strip_prefix('/') {
        Some(path) if !path.is_empty() => format!("\"{path}\""),
        _ => "(root)".to_owned(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A property of a tool's argument schema.
fn property(kind: &str, description: &str) -> Value {
    json!({"type": kind, "description": description})
}

/// A property with the default the IDE applies when the model leaves it out.
fn property_with_default(kind: &str, description: &str, default: impl Into<Value>) -> Value {
    json!({"type": kind, "description": description, "default": default.into()})
}

fn build_registry() -> Vec<ToolSpec> {
    // Order matters for the LLM request (the original's order): switch_mode first, then the
    // IDE tools, then our completion tools.
    vec![
        ToolSpec {
            name: "switch_mode",
            description: "Hand the task to another agent when it needs abilities you do not \
                have. The conversation is kept; the other agent continues right away.",
            location: ToolLocation::Server,
            parameters: json!({
                "type": "object",
                "properties": {
                    "mode": {
                        "type": "string",
                        "enum": ["orchestrator", "coder", "architect", "debug", "ask"],
                        "description": "The agent to hand over to: coder writes code, architect \
                            designs and documents, debug investigates failures, ask explains; \
                            orchestrator when unsure."
                    },
                    "reason": property_with_default(
                        "string",
                        "Why the other agent is better suited.",
                        "Task requires different agent capabilities",
                    )
                },
                "required": ["mode"]
            }),
        },
        ToolSpec {
            name: "read_file",
            description: "Read a text file of the workspace, whole or a range of lines.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": property("string", "File path relative to the workspace root."),
                    "encoding": property_with_default(
                        "string",
                        "Text encoding of the file.",
                        "utf-8",
                    ),
                    "start_line": {
                        "type": "integer",
                        "description": "First line to read (1-based, inclusive).",
                        "minimum": 1
                    },
                    "end_line": {
                        "type": "integer",
                        "description": "Last line to read (1-based, inclusive).",
                        "minimum": 1
                    }
                },
                "required": ["path"]
            }),
        },
        ToolSpec {
            name: "write_file",
            description: "Create a file or replace its whole content.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": property("string", "File path relative to the workspace root."),
                    "content": property("string", "The complete new content of the file."),
                    "encoding": property_with_default("string", "Text encoding to write.", "utf-8"),
                    "create_dirs": property_with_default(
                        "boolean",
                        "Create missing parent directories.",
                        false,
                    ),
                    "backup": property_with_default(
                        "boolean",
                        "Keep a backup of the previous content.",
                        true,
                    )
                },
                "required": ["path", "content"]
            }),
        },
        ToolSpec {
            name: "list_files",
            description: "List the files and directories of a workspace directory.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": property(
                        "string",
                        "Directory relative to the workspace root (\".\" for the root).",
                    ),
                    "recursive": property_with_default("boolean", "Include subdirectories.", false),
                    "include_hidden": property_with_default(
                        "boolean",
                        "Include hidden entries (names starting with a dot).",
                        false,
                    ),
                    "pattern": property("string", "Only names matching this glob, e.g. \"*.py\".")
                },
                "required": ["path"]
            }),
        },
        ToolSpec {
            name: "create_directory",
            description: "Create a directory in the workspace.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": property("string", "Directory path relative to the workspace root."),
                    "recursive": property_with_default(
                        "boolean",
                        "Create missing parent directories too.",
                        true,
                    )
                },
                "required": ["path"]
            }),
        },
        ToolSpec {
            name: "execute_command",
            description: "Run a command in the workspace and return its output and exit code.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "command": property("string", "The command line to run."),
                    "cwd": property("string", "Working directory relative to the workspace root."),
                    "timeout": property_with_default(
                        "integer",
                        "Seconds before the command is stopped (at most 300).",
                        60,
                    ),
                    "shell": property_with_default(
                        "boolean",
                        "Run through the shell (pipes, redirections).",
                        false,
                    )
                },
                "required": ["command"]
            }),
        },
        ToolSpec {
            name: "search_in_code",
            description: "Search the workspace's files for text or a regular expression.",
            location: ToolLocation::Ide,
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": property("string", "Text or regular expression to find."),
                    "path": property_with_default(
                        "string",
                        "Directory to search, relative to the workspace root.",
                        ".",
                    ),
                    "file_pattern": property(
                        "string",
                        "Only files matching this glob, e.g. \"*.rs\".",
                    ),
                    "case_sensitive": property_with_default(
                        "boolean",
                        "Match case exactly.",
                        false,
                    ),
                    "regex": property_with_default(
                        "boolean",
                        "Treat the query as a regular expression.",
                        false,
                    ),
                    "max_results": property_with_default(
                        "integer",
                        "Most matches to return (at most 1000).",
                        100,
                    )
                },
                "required": ["query"]
            }),
        },
        ToolSpec {
            name: "attempt_completion",
            description: "Finish the task: present the final result to the user. Use it once \
                the work is done; do not end with a question.",
            location: ToolLocation::Server,
            parameters: json!({
                "type": "object",
                "properties": {
                    "result": property(
                        "string",
                        "What was done and its outcome, as shown to the user.",
                    )
                },
                "required": ["result"]
            }),
        },
        ToolSpec {
            name: "ask_followup_question",
            description: "Ask the user a question when you cannot go on without their answer.",
            location: ToolLocation::Server,
            parameters: json!({
                "type": "object",
                "properties": {
                    "question": property("string", "The question, clear and specific."),
                    "suggestions": {
                        "type": "array",
                        "description": "Two to four short answers the user can pick.",
                        "items": {"type": "string"},
                        "minItems": 2,
                        "maxItems": 4
                    }
                },
                "required": ["question"]
            }),
        },
        ToolSpec {
            name: "create_plan",
            description: "Break a complex task into an ordered plan of subtasks for the user to \
                approve. Each subtask is done by one agent (coder, debug or ask) with a focused \
                context: the plan, its own description and the results of the subtasks it \
                depends on. Write each description so that it can be done on its own.",
            location: ToolLocation::Server,
            parameters: json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string", "minLength": 1, "description": "A short name for the plan."},
                    "description": property("string", "The goal of the plan and how it gets there."),
                    "subtasks": {
                        "type": "array",
                        "description": "The subtasks in the order they should run.",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "title": {"type": "string", "minLength": 1},
                                "description": {
                                    "type": "string",
                                    "minLength": 1,
                                    "description": "What to do, in enough detail to do it without the conversation."
                                },
                                "agent": {"type": "string", "enum": ["coder", "debug", "ask"]},
                                "estimated_time_minutes": {"type": "integer", "minimum": 1},
                                "dependencies": {
                                    "type": "array",
                                    "description": "0-based indices of the subtasks that must be done first.",
                                    "items": {"type": "integer", "minimum": 0}
                                }
                            },
                            "required": ["title", "description", "agent", "estimated_time_minutes"]
                        }
                    }
                },
                "required": ["title", "description", "subtasks"]
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(name: &str) -> &'static Value {
        &get(name).unwrap().parameters
    }

    #[test]
    fn every_schema_compiles() {
        assert_eq!(VALIDATORS.len(), IDE_TOOLS.len() + SERVER_TOOLS.len());
        for name in IDE_TOOLS.iter().chain(SERVER_TOOLS.iter()) {
            assert!(get(name).is_some(), "{name}");
        }
    }

    #[test]
    fn ide_tool_schemas_are_the_originals() {
        let read = params("read_file");
        assert_eq!(read["required"], json!(["path"]));
        assert_eq!(read["properties"]["encoding"]["default"], "utf-8");
        assert_eq!(read["properties"]["start_line"]["type"], "integer");
        assert_eq!(read["properties"]["start_line"]["minimum"], 1);
        assert_eq!(read["properties"]["end_line"]["minimum"], 1);

        let write = params("write_file");
        assert_eq!(write["required"], json!(["path", "content"]));
        assert_eq!(write["properties"]["create_dirs"]["default"], false);
        assert_eq!(write["properties"]["backup"]["default"], true);

        let list = params("list_files");
        assert_eq!(list["required"], json!(["path"]));
        assert_eq!(list["properties"]["recursive"]["default"], false);
        assert_eq!(list["properties"]["include_hidden"]["default"], false);
        assert_eq!(list["properties"]["pattern"]["type"], "string");

        let mkdir = params("create_directory");
        assert_eq!(mkdir["properties"]["recursive"]["default"], true);

        let exec = params("execute_command");
        assert_eq!(exec["required"], json!(["command"]));
        assert_eq!(exec["properties"]["timeout"]["type"], "integer");
        assert_eq!(exec["properties"]["timeout"]["default"], 60);
        assert_eq!(exec["properties"]["shell"]["default"], false);
        assert_eq!(exec["properties"]["cwd"]["type"], "string");

        let search = params("search_in_code");
        assert_eq!(search["required"], json!(["query"]));
        assert_eq!(search["properties"]["path"]["default"], ".");
        assert_eq!(search["properties"]["case_sensitive"]["default"], false);
        assert_eq!(search["properties"]["regex"]["default"], false);
        assert_eq!(search["properties"]["max_results"]["default"], 100);

        let switch = params("switch_mode");
        assert_eq!(
            switch["properties"]["mode"]["enum"],
            json!(["orchestrator", "coder", "architect", "debug", "ask"])
        );
        assert_eq!(switch["required"], json!(["mode"]));
        assert_eq!(
            params("ask_followup_question")["properties"]["suggestions"]["minItems"],
            2
        );
        assert_eq!(
            params("ask_followup_question")["properties"]["suggestions"]["maxItems"],
            4
        );
    }

    #[test]
    fn definitions_follow_each_agents_list() {
        let names = |agent| {
            definitions_for(agent)
                .into_iter()
                .map(|d| d.function.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(AgentKind::Ask),
            [
                "read_file",
                "search_in_code",
                "list_files",
                "switch_mode",
                "attempt_completion"
            ]
        );
        assert_eq!(names(AgentKind::Coder).len(), 8);
        assert!(names(AgentKind::Orchestrator).is_empty());
        assert!(!names(AgentKind::Universal).contains(&"switch_mode".to_owned()));
        let def = serde_json::to_value(&definitions_for(AgentKind::Debug)[0]).unwrap();
        assert_eq!(def["type"], "function");
        assert_eq!(def["function"]["name"], "read_file");
        assert!(def["function"]["parameters"]["properties"]["path"].is_object());
    }

    #[test]
    fn server_side_tools_are_known() {
        assert!(is_server_side("switch_mode"));
        assert!(is_server_side("attempt_completion"));
        assert!(is_server_side("ask_followup_question"));
        assert!(!is_server_side("write_file"));
        assert!(is_ide_tool("search_in_code"));
        assert!(get("echo").is_none() && get("calculator").is_none());
    }

    #[test]
    fn every_ide_tool_but_the_readers_changes_the_workspace() {
        let changing: Vec<&str> = IDE_TOOLS
            .into_iter()
            .filter(|t| changes_workspace(t))
            .collect();
        assert_eq!(
            changing,
            ["write_file", "create_directory", "execute_command"]
        );
        // Unknown names count as changing: a new IDE tool asks until a rule says otherwise.
        assert!(changes_workspace("delete_file") && changes_workspace("format_disk"));
        assert!(!changes_workspace("switch_mode") && !changes_workspace("search_files"));
    }

    #[test]
    fn valid_arguments_are_returned_verbatim_without_defaults() {
        let raw = r#"{"path": "src/a.py", "start_line": 3}"#;
        let value = validate_arguments("read_file", raw).unwrap();
        assert_eq!(value, json!({"path": "src/a.py", "start_line": 3}));
        assert!(value.get("encoding").is_none());
        // Unknown extra properties are relayed too: the schemas do not forbid them.
        let value = validate_arguments("list_files", r#"{"path": ".", "x": 1}"#).unwrap();
        assert_eq!(value, json!({"path": ".", "x": 1}));
    }

    #[test]
    fn a_missing_required_property_is_named() {
        let err = validate_arguments("write_file", r#"{"path": "a.py"}"#).unwrap_err();
        assert_eq!(err, "write_file: missing required property \"content\"");
    }

    #[test]
    fn a_wrong_type_is_explained() {
        let err =
            validate_arguments("read_file", r#"{"path": "a", "start_line": "3"}"#).unwrap_err();
        assert_eq!(
            err,
            "read_file: property \"start_line\" must be of type integer, got a string"
        );
        let err = validate_arguments("read_file", r#"{"path": "a", "start_line": 0}"#).unwrap_err();
        assert!(err.contains("\"start_line\" must be at least 1"), "{err}");
        let err = validate_arguments("switch_mode", r#"{"mode": "wizard"}"#).unwrap_err();
        assert!(err.contains("must be one of orchestrator, coder"), "{err}");
        let err = validate_arguments(
            "ask_followup_question",
            r#"{"question": "?", "suggestions": ["a"]}"#,
        )
        .unwrap_err();
        assert!(err.contains("at least 2 items"), "{err}");
        let err = validate_arguments(
            "ask_followup_question",
            r#"{"question": "?", "suggestions": ["a", 2]}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("\"suggestions/1\" must be of type string"),
            "{err}"
        );
    }

    #[test]
    fn unknown_tools_and_non_objects_are_refused() {
        assert!(
            validate_arguments("echo", "{}")
                .unwrap_err()
                .starts_with("unknown tool \"echo\"")
        );
        let err = validate_arguments("read_file", r#"["a"]"#).unwrap_err();
        assert_eq!(
            err,
            "read_file: the arguments must be a JSON object, got an array"
        );
        let err = validate_arguments("read_file", "{path:").unwrap_err();
        assert!(
            err.starts_with("read_file: the arguments are not valid JSON"),
            "{err}"
        );
        let err = validate_arguments("attempt_completion", "").unwrap_err();
        assert_eq!(
            err,
            "attempt_completion: missing required property \"result\""
        );
    }
}
