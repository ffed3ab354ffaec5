//! The agents (`docs/agent-runtime.md`, "Agents"): their kinds, tool sets and file rules,
//! which of them a mode registers, and which model each one talks to.
//!
//! This is pure data and checks; prompts live in [`crate::prompts`], tool schemas in
//! [`crate::tools`], and the turn engine decides what to do with a refused call.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use codelab_protocol::ide::IDE_TOOLS;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;

/// One of the runtime's agents; the wire name is the snake_case variant name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Routes a session's first message to a specialist; never answers itself.
    Orchestrator,
    /// Writes and changes code.
    Coder,
    /// Designs and documents; writes Markdown only.
    Architect,
    /// Investigates failures; never writes.
    Debug,
    /// Explains and answers; never writes, never runs commands.
    Ask,
    /// Single-agent mode: does everything itself.
    Universal,
}

impl AgentKind {
    /// Every kind, in the order of the wire enum.
    pub const ALL: [AgentKind; 6] = [
        AgentKind::Orchestrator,
        AgentKind::Coder,
        AgentKind::Architect,
        AgentKind::Debug,
        AgentKind::Ask,
        AgentKind::Universal,
    ];

    /// Parses a wire name (`"coder"`); exact, lowercase, as the original's enum.
    pub fn parse(value: &str) -> Option<AgentKind> {
        Some(match value {
            "orchestrator" => AgentKind::Orchestrator,
            "coder" => AgentKind::Coder,
            "architect" => AgentKind::Architect,
            "debug" => AgentKind::Debug,
            "ask" => AgentKind::Ask,
            "universal" => AgentKind::Universal,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Orchestrator => "orchestrator",
            AgentKind::Coder => "coder",
            AgentKind::Architect => "architect",
            AgentKind::Debug => "debug",
            AgentKind::Ask => "ask",
            AgentKind::Universal => "universal",
        }
    }

    /// The human name the original's `GET /agents` shows (capitalised type + " Agent").
    pub fn display_name(self) -> &'static str {
        match self {
            AgentKind::Orchestrator => "Orchestrator Agent",
            AgentKind::Coder => "Coder Agent",
            AgentKind::Architect => "Architect Agent",
            AgentKind::Debug => "Debug Agent",
            AgentKind::Ask => "Ask Agent",
            AgentKind::Universal => "Universal Agent",
        }
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an agent may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRule {
    /// No restriction beyond the tool list.
    None,
    /// `write_file` only to paths ending in `.md` (the original's `.*\.md$`, case-sensitive).
    MarkdownOnly,
    /// The agent has no write tool at all.
    NoWrites,
}

/// Everything the runtime knows about one agent besides its prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub kind: AgentKind,
    /// Tool names offered to the model, in the order they are offered.
    pub tools: Vec<&'static str>,
    pub file_rule: FileRule,
    /// One line for `GET /agents`.
    pub description: &'static str,
}

impl AgentSpec {
    /// The spec of one kind (the original's tool sets, with our server-side tools).
    pub fn of(kind: AgentKind) -> AgentSpec {
        AgentSpec {
            kind,
            tools: tools_of(kind).to_vec(),
            file_rule: file_rule_of(kind),
            description: description_of(kind),
        }
    }

    /// Whether the agent may call this tool at all.
    pub fn has_tool(&self, tool_name: &str) -> bool {
        self.tools.contains(&tool_name)
    }
}

/// Every IDE tool in registry order, then the completion tools; nobody to switch to.
static UNIVERSAL_TOOLS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    IDE_TOOLS
        .into_iter()
        .chain(["attempt_completion", "ask_followup_question"])
        .collect()
});

/// The tool names of one kind, in the order they are offered to the model.
pub fn tools_of(kind: AgentKind) -> &'static [&'static str] {
    match kind {
        // It only routes: it never makes a tool-enabled call.
        AgentKind::Orchestrator => &[],
        // No switch_mode: as in the original, the coder cannot hand off.
        AgentKind::Coder => &[
            "read_file",
            "write_file",
            "list_files",
            "search_in_code",
            "create_directory",
            "execute_command",
            "attempt_completion",
            "ask_followup_question",
        ],
        AgentKind::Architect => &[
            "read_file",
            "write_file",
            "list_files",
            "search_in_code",
            "switch_mode",
            "create_plan",
            "attempt_completion",
            "ask_followup_question",
        ],
        AgentKind::Debug => &[
            "read_file",
            "list_files",
            "search_in_code",
            "execute_command",
            "switch_mode",
            "attempt_completion",
            "ask_followup_question",
        ],
        AgentKind::Ask => &[
            "read_file",
            "search_in_code",
            "list_files",
            "switch_mode",
            "attempt_completion",
        ],
        AgentKind::Universal => &UNIVERSAL_TOOLS,
    }
}

/// The file rule of one kind.
pub fn file_rule_of(kind: AgentKind) -> FileRule {
    match kind {
        AgentKind::Architect => FileRule::MarkdownOnly,
        AgentKind::Debug | AgentKind::Ask => FileRule::NoWrites,
        AgentKind::Orchestrator | AgentKind::Coder | AgentKind::Universal => FileRule::None,
    }
}

fn description_of(kind: AgentKind) -> &'static str {
    match kind {
        AgentKind::Orchestrator => {
            "Routes each new task to the specialist best suited for it; never does the work itself"
        }
        AgentKind::Coder => "Writes, changes and refactors code, runs commands and tests",
        AgentKind::Architect => {
            "Designs systems, writes specifications and documentation (Markdown files only)"
        }
        AgentKind::Debug => {
            "Investigates errors and failures, finds root causes; reads and runs diagnostics, never edits"
        }
        AgentKind::Ask => "Explains code and concepts and answers questions; read-only",
        AgentKind::Universal => {
            "Does every kind of task itself: code, design, debugging, questions"
        }
    }
}

/// One entry of `GET /agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    #[serde(rename = "type")]
    pub kind: AgentKind,
    pub name: &'static str,
    pub description: &'static str,
    pub allowed_tools: Vec<&'static str>,
    /// True only for a path rule on writes (architect), as in the original; debug and ask
    /// simply have no write tool.
    pub has_file_restrictions: bool,
}

/// A bad agent setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentConfigError {
    /// `AGENT_RUNTIME__AGENT_MODELS` could not be parsed.
    #[error("AGENT_RUNTIME__AGENT_MODELS: {0}")]
    AgentModels(String),
    /// `AGENT_RUNTIME__LLM_MODEL` is empty.
    #[error("AGENT_RUNTIME__LLM_MODEL must not be empty")]
    EmptyModel,
}

/// The agents of this process's mode, and the model of each.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    multi_agent: bool,
    agents: Vec<AgentSpec>,
    default_model: String,
    models: HashMap<AgentKind, String>,
}

impl AgentRegistry {
    /// Multi-agent mode registers orchestrator, coder, architect, debug, ask; single-agent mode
    /// orchestrator and universal. `agent_models` is `name=model,name=model` (may be empty).
    pub fn new(
        multi_agent_mode: bool,
        llm_model: &str,
        agent_models: &str,
    ) -> Result<AgentRegistry, AgentConfigError> {
        let default_model = llm_model.trim();
        if default_model.is_empty() {
            return Err(AgentConfigError::EmptyModel);
        }
        let kinds: &[AgentKind] = if multi_agent_mode {
            &[
                AgentKind::Orchestrator,
                AgentKind::Coder,
                AgentKind::Architect,
                AgentKind::Debug,
                AgentKind::Ask,
            ]
        } else {
            &[AgentKind::Orchestrator, AgentKind::Universal]
        };
        Ok(AgentRegistry {
            multi_agent: multi_agent_mode,
            agents: kinds.iter().map(|k| AgentSpec::of(*k)).collect(),
            default_model: default_model.to_owned(),
            models: parse_agent_models(agent_models)?,
        })
    }

    /// The registry the settings describe.
    pub fn from_config(config: &Config) -> Result<AgentRegistry, AgentConfigError> {
        AgentRegistry::new(
            config.multi_agent_mode,
            &config.llm_model,
            &config.agent_models,
        )
    }

    /// Whether this is multi-agent mode.
    pub fn multi_agent(&self) -> bool {
        self.multi_agent
    }

    /// A registered agent; `None` for a kind this mode does not register (e.g. `universal` in
    /// multi-agent mode).
    pub fn get(&self, kind: AgentKind) -> Option<&AgentSpec> {
        self.agents.iter().find(|a| a.kind == kind)
    }

    /// Whether this mode registers the kind.
    pub fn is_registered(&self, kind: AgentKind) -> bool {
        self.get(kind).is_some()
    }

    /// The registered agents in registration order.
    pub fn specs(&self) -> &[AgentSpec] {
        &self.agents
    }

    /// The `GET /agents` entries, in registration order.
    pub fn list(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|a| AgentInfo {
                kind: a.kind,
                name: a.kind.display_name(),
                description: a.description,
                allowed_tools: a.tools.clone(),
                has_file_restrictions: a.file_rule == FileRule::MarkdownOnly,
            })
            .collect()
    }

    /// The model this agent talks to: its `AGENT_MODELS` entry, else `LLM_MODEL`. The
    /// orchestrator's model is the one used for routing.
    pub fn model_for(&self, kind: AgentKind) -> &str {
        self.models
            .get(&kind)
            .map_or(self.default_model.as_str(), String::as_str)
    }

    /// Whether `kind` may make this call: the tool must be in its list and a write must obey
    /// its file rule. The error is a message for the model, saying which agent to switch to.
    ///
    /// Argument shape is [`crate::tools::validate_arguments`]'s job; this only reads
    /// `arguments.path` for `write_file`.
    pub fn check_tool_allowed(
        &self,
        kind: AgentKind,
        tool_name: &str,
        arguments: &Value,
    ) -> Result<(), String> {
        check_tool_allowed(kind, tool_name, arguments)
    }
}

/// [`AgentRegistry::check_tool_allowed`] without a registry (tool lists are fixed per kind).
pub fn check_tool_allowed(
    kind: AgentKind,
    tool_name: &str,
    arguments: &Value,
) -> Result<(), String> {
    let name = kind.display_name();
    if !tools_of(kind).contains(&tool_name) {
        return Err(refusal(kind, tool_name));
    }
    if tool_name == "write_file" && file_rule_of(kind) == FileRule::MarkdownOnly {
        let Some(path) = arguments.get("path").and_then(Value::as_str) else {
            return Err("write_file needs a string \"path\"".to_owned());
        };
        if !path.ends_with(".md") {
            return Err(format!(
                "the {name} may only write Markdown files (*.md), not \"{path}\"; \
                 call switch_mode with mode \"coder\" to have the Coder Agent write code"
            ));
        }
    }
    Ok(())
}

/// Why `kind` may not call `tool_name`, with the agent that can.
fn refusal(kind: AgentKind, tool_name: &str) -> String {
    let name = kind.display_name();
    let writes = matches!(tool_name, "write_file" | "create_directory");
    match (kind, tool_name) {
        (AgentKind::Orchestrator, _) => {
            format!("the {name} only routes tasks and cannot use tools such as {tool_name}")
        }
        (AgentKind::Debug | AgentKind::Ask, _) if writes => format!(
            "the {name} never modifies files, so it cannot use {tool_name}; \
             call switch_mode with mode \"coder\" to have the Coder Agent make the change"
        ),
        (AgentKind::Ask, "execute_command") => format!(
            "the {name} does not run commands; call switch_mode with mode \"coder\" to run or \
             build something, or mode \"debug\" to investigate a failure"
        ),
        (AgentKind::Architect, "execute_command" | "create_directory") => format!(
            "the {name} does not run commands or create directories; call switch_mode with \
             mode \"coder\" to have the Coder Agent do it"
        ),
        (AgentKind::Coder | AgentKind::Universal, "switch_mode") => format!(
            "the {name} cannot hand the task to another agent; do the work yourself and finish \
             with attempt_completion"
        ),
        _ => {
            let allowed = tools_of(kind).join(", ");
            format!("the {name} cannot use {tool_name}; its tools are: {allowed}")
        }
    }
}

/// Parses `architect=claude-sonnet, coder=gpt-4.1`; empty entries are ignored.
fn parse_agent_models(value: &str) -> Result<HashMap<AgentKind, String>, AgentConfigError> {
    let mut models = HashMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((agent, model)) = entry.split_once('=') else {
            return Err(AgentConfigError::AgentModels(format!(
                "expected entries like \"architect=claude-sonnet\", got \"{entry}\""
            )));
        };
        let (agent, model) = (agent.trim(), model.trim());
        let Some(kind) = AgentKind::parse(agent) else {
            return Err(AgentConfigError::AgentModels(format!(
                "unknown agent \"{agent}\" (expected one of orchestrator, coder, architect, debug, ask, universal)"
            )));
        };
        if model.is_empty() {
            return Err(AgentConfigError::AgentModels(format!(
                "empty model name for agent \"{agent}\""
            )));
        }
        if models.insert(kind, model.to_owned()).is_some() {
            return Err(AgentConfigError::AgentModels(format!(
                "agent \"{agent}\" is named twice"
            )));
        }
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn multi() -> AgentRegistry {
        AgentRegistry::new(true, "mock-llm", "").unwrap()
    }

    /// Whether the architect may call `write_file` with `arguments`.
    fn architect_writes(r: &AgentRegistry, arguments: Value) -> Result<(), String> {
        r.check_tool_allowed(AgentKind::Architect, "write_file", &arguments)
    }

    #[test]
    fn multi_agent_mode_registers_the_five_agents_in_order() {
        let kinds: Vec<_> = multi().list().iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["orchestrator", "coder", "architect", "debug", "ask"]
        );
        assert!(multi().get(AgentKind::Universal).is_none());
    }

    #[test]
    fn single_agent_mode_registers_orchestrator_and_universal() {
        let registry = AgentRegistry::new(false, "mock-llm", "").unwrap();
        let kinds: Vec<_> = registry.list().iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [AgentKind::Orchestrator, AgentKind::Universal]);
        assert!(registry.get(AgentKind::Coder).is_none());
    }

    #[test]
    fn agents_list_has_the_wire_shape() {
        let list = serde_json::to_value(multi().list()).unwrap();
        assert_eq!(list[2]["type"], "architect");
        assert_eq!(list[2]["name"], "Architect Agent");
        assert_eq!(list[2]["has_file_restrictions"], true);
        assert_eq!(list[1]["has_file_restrictions"], false);
        assert_eq!(
            list[4]["allowed_tools"],
            json!([
                "read_file",
                "search_in_code",
                "list_files",
                "switch_mode",
                "attempt_completion"
            ])
        );
        assert_eq!(list[0]["allowed_tools"], json!([]));
        assert!(list[3]["description"].as_str().unwrap().len() > 10);
    }

    #[test]
    fn kinds_round_trip_through_their_wire_names() {
        for kind in AgentKind::ALL {
            assert_eq!(AgentKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        }
        assert_eq!(AgentKind::parse("Coder"), None);
        assert_eq!(AgentKind::Debug.display_name(), "Debug Agent");
    }

    #[test]
    fn tool_sets_follow_the_spec() {
        assert!(tools_of(AgentKind::Coder).contains(&"execute_command"));
        assert!(!tools_of(AgentKind::Coder).contains(&"switch_mode"));
        assert!(!tools_of(AgentKind::Debug).contains(&"write_file"));
        assert!(!tools_of(AgentKind::Ask).contains(&"execute_command"));
        assert!(!tools_of(AgentKind::Ask).contains(&"ask_followup_question"));
        assert!(tools_of(AgentKind::Universal).contains(&"create_directory"));
        assert!(tools_of(AgentKind::Orchestrator).is_empty());
    }

    #[test]
    fn per_agent_models_override_the_default() {
        let registry = AgentRegistry::new(
            true,
            "mock-llm",
            " architect=claude-sonnet , coder=gpt-4.1,",
        )
        .unwrap();
        assert_eq!(registry.model_for(AgentKind::Architect), "claude-sonnet");
        assert_eq!(registry.model_for(AgentKind::Coder), "gpt-4.1");
        assert_eq!(registry.model_for(AgentKind::Debug), "mock-llm");
        assert_eq!(registry.model_for(AgentKind::Orchestrator), "mock-llm");
    }

    #[test]
    fn bad_agent_models_name_the_setting() {
        for bad in ["architect", "wizard=gpt", "coder=", "coder=a,coder=b"] {
            let err = AgentRegistry::new(true, "m", bad).unwrap_err().to_string();
            assert!(err.starts_with("AGENT_RUNTIME__AGENT_MODELS: "), "{err}");
        }
        assert_eq!(
            AgentRegistry::new(true, " ", "").unwrap_err(),
            AgentConfigError::EmptyModel
        );
    }

    #[test]
    fn architect_writes_only_markdown() {
        let r = multi();
        assert!(architect_writes(&r, json!({"path": "docs/plan.md"})).is_ok());
        let err = architect_writes(&r, json!({"path": "src/main.rs"})).unwrap_err();
        assert!(err.contains("Markdown") && err.contains("coder"), "{err}");
        // Case-sensitive, as the original's regex.
        assert!(architect_writes(&r, json!({"path": "README.MD"})).is_err());
        assert!(architect_writes(&r, json!({})).is_err());
    }

    #[test]
    fn read_only_agents_are_refused_writes_with_a_hint() {
        let r = multi();
        for kind in [AgentKind::Debug, AgentKind::Ask] {
            let err = r
                .check_tool_allowed(kind, "write_file", &json!({"path": "a.md"}))
                .unwrap_err();
            assert!(
                err.contains("never modifies files") && err.contains("\"coder\""),
                "{err}"
            );
        }
        let err = r
            .check_tool_allowed(AgentKind::Ask, "execute_command", &json!({"command": "ls"}))
            .unwrap_err();
        assert!(err.contains("does not run commands"), "{err}");
        assert!(
            r.check_tool_allowed(
                AgentKind::Debug,
                "execute_command",
                &json!({"command": "ls"})
            )
            .is_ok()
        );
    }

    #[test]
    fn tools_outside_the_list_are_refused() {
        let r = multi();
        let err = r
            .check_tool_allowed(AgentKind::Coder, "switch_mode", &json!({"mode": "ask"}))
            .unwrap_err();
        assert!(err.contains("attempt_completion"), "{err}");
        assert!(
            r.check_tool_allowed(AgentKind::Coder, "delete_file", &json!({}))
                .unwrap_err()
                .contains("its tools are")
        );
        assert!(
            r.check_tool_allowed(AgentKind::Orchestrator, "read_file", &json!({}))
                .is_err()
        );
        assert!(
            r.check_tool_allowed(AgentKind::Coder, "write_file", &json!({"path": "src/x.rs"}))
                .is_ok()
        );
    }
}
