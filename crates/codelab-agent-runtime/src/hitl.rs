//! The human-in-the-loop policy: which tool calls wait for a person's approval, and why.
//!
//! Rules are shell-glob patterns on the tool name, evaluated first match wins; a rule may
//! apply to some agents only. A tool no rule matches needs approval when it can change the
//! workspace (unless the file says `unmatched: allow`); read-only and server-side tools do
//! not. The built-in table is the original's; `AGENT_RUNTIME__HITL_POLICY_FILE`
//! replaces it with a YAML or JSON file (format in `docs/agent-runtime.md`, "HITL policy
//! file").
//!
//! A rule limited to some agents that waives approval for a workspace-changing tool is an
//! *exemption* of those agents. Exemptions apply only to an agent the user chose (see
//! [`agents_chosen_by_user`]): a model must not reach them through `switch_mode`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::agents::{AgentKind, tools_of};
use crate::model::AgentSwitch;
use crate::tools;

/// What the policy says about one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub requires_approval: bool,
    /// The matching rule's reason (shown in the approval dialog).
    pub reason: Option<String>,
}

impl Verdict {
    /// No approval needed and nothing to say.
    pub fn allow() -> Verdict {
        Verdict {
            requires_approval: false,
            reason: None,
        }
    }
}

/// One rule as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitlRule {
    /// Shell glob on the tool name (`write_file`, `*_file`, `execute_*`, `*`).
    pub pattern: String,
    pub requires_approval: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only these agents; `None` (absent) for every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
}

/// A policy file's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    /// Append the built-in table after the file's rules (so a file can add a few overrides).
    #[serde(default)]
    include_defaults: bool,
    /// What a workspace-changing tool no rule matches needs.
    #[serde(default)]
    unmatched: Unmatched,
    #[serde(default)]
    rules: Vec<HitlRule>,
}

/// What a workspace-changing tool that no rule matches needs (read-only tools never need
/// approval when unmatched).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// A person approves it: a policy file that forgets a tool must not let it run unasked.
    #[default]
    RequireApproval,
    /// It runs without approval (the file's explicit choice).
    Allow,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Clone)]
struct CompiledRule {
    matcher: GlobMatcher,
    requires_approval: bool,
    reason: Option<String>,
    agents: Option<Vec<AgentKind>>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HitlError {
    #[error("cannot read the HITL policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the HITL policy file {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("the HITL policy file {path}, rule {index}: {message}")]
    Rule {
        path: PathBuf,
        /// 0-based position in `rules`.
        index: usize,
        message: String,
    },
    #[error("the HITL policy file {path} must end in .yaml, .yml or .json")]
    Extension { path: PathBuf },
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct HitlPolicy {
    /// `false`: nothing needs approval.
    pub enabled: bool,
    /// What an unmatched workspace-changing tool needs.
    pub unmatched: Unmatched,
    rules: Vec<CompiledRule>,
}

/// The original's table: (pattern, requires approval, reason).
const DEFAULT_RULES: [(&str, bool, Option<&str>); 8] = [
    (
        "write_file",
        true,
        Some("File modification requires user approval"),
    ),
    (
        "delete_file",
        true,
        Some("File deletion requires user approval"),
    ),
    (
        "execute_command",
        true,
        Some("Command execution requires user approval"),
    ),
    (
        "create_directory",
        true,
        Some("Directory creation requires user approval"),
    ),
    ("move_file", true, Some("File move requires user approval")),
    ("read_file", false, None),
    ("list_files", false, None),
    ("search_files", false, None),
];

impl Default for HitlPolicy {
    /// The original's table, enabled.
    fn default() -> Self {
        HitlPolicy {
            enabled: true,
            unmatched: Unmatched::RequireApproval,
            rules: default_rules(),
        }
    }
}

impl HitlPolicy {
    /// The built-in table without a path; the file's rules with one (`.yaml`/`.yml` or `.json`).
    pub fn load(path: Option<&Path>) -> Result<HitlPolicy, HitlError> {
        let Some(path) = path else {
            return Ok(HitlPolicy::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| HitlError::Read {
            path: path.to_owned(),
            source,
        })?;
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let file: PolicyFile = match extension.as_deref() {
            Some("yaml" | "yml") => {
                serde_norway::from_str(&text).map_err(|e| HitlError::Parse {
                    path: path.to_owned(),
                    format: "YAML",
                    message: e.to_string(),
                })?
            }
            Some("json") => serde_json::from_str(&text).map_err(|e| HitlError::Parse {
                path: path.to_owned(),
                format: "JSON",
                message: e.to_string(),
            })?,
            _ => {
                return Err(HitlError::Extension {
                    path: path.to_owned(),
                });
            }
        };
        let mut policy =
            HitlPolicy::from_rules(file.enabled, &file.rules).map_err(|(index, message)| {
                HitlError::Rule {
                    path: path.to_owned(),
                    index,
                    message,
                }
            })?;
        if file.include_defaults {
            policy.rules.extend(default_rules());
        }
        policy.unmatched = file.unmatched;
        Ok(policy)
    }

    /// A policy from rules; the error is the failing rule's index and what is wrong with it.
    pub fn from_rules(enabled: bool, rules: &[HitlRule]) -> Result<HitlPolicy, (usize, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile(rule).map_err(|message| (index, message)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HitlPolicy {
            enabled,
            unmatched: Unmatched::RequireApproval,
            rules,
        })
    }

    /// Whether a call of `tool` by `agent` needs approval: the first rule that matches the name
    /// and applies to the agent decides; when none matches, a workspace-changing tool needs
    /// approval unless the policy says `unmatched: allow`.
    pub fn evaluate(&self, agent: AgentKind, tool: &str) -> Verdict {
        self.evaluate_where(tool, |agents| agents.is_none_or(|a| a.contains(&agent)))
    }

    /// [`HitlPolicy::evaluate`] for a call the session's agent makes, where
    /// `exemptions_allowed` says whether the user chose that agent (see
    /// [`agents_chosen_by_user`]): if not, the agent's exemptions do not apply and the call
    /// needs what it would need from any agent.
    pub fn evaluate_in_session(
        &self,
        agent: AgentKind,
        tool: &str,
        exemptions_allowed: bool,
    ) -> Verdict {
        let verdict = self.evaluate(agent, tool);
        if exemptions_allowed || verdict.requires_approval || !self.is_exemption(agent, tool) {
            return verdict;
        }
        Verdict {
            requires_approval: true,
            reason: Some(format!(
                "{tool} requires user approval: the HITL policy waives it only for the {agent} \
                 agent when you choose that agent, and the model switched to it itself"
            )),
        }
    }

    /// The workspace-changing tools of `agent` that a rule limited to some agents lets it run
    /// without the approval every agent would need.
    pub fn exemptions(&self, agent: AgentKind) -> Vec<&'static str> {
        tools_of(agent)
            .iter()
            .copied()
            .filter(|tool| self.is_exemption(agent, tool))
            .collect()
    }

    /// Whether any agent has an exemption (when none has, nobody's choice matters).
    pub fn has_exemptions(&self) -> bool {
        AgentKind::ALL
            .iter()
            .any(|agent| !self.exemptions(*agent).is_empty())
    }

    fn is_exemption(&self, agent: AgentKind, tool: &str) -> bool {
        tools::changes_workspace(tool)
            && !self.evaluate(agent, tool).requires_approval
            && self
                .evaluate_where(tool, |agents| agents.is_none())
                .requires_approval
    }

    /// The verdict of the first rule that matches `tool` among those whose agent list
    /// `applies` accepts, else the unmatched verdict.
    fn evaluate_where(
        &self,
        tool: &str,
        applies: impl Fn(Option<&Vec<AgentKind>>) -> bool,
    ) -> Verdict {
        if !self.enabled {
            return Verdict::allow();
        }
        let matched = self
            .rules
            .iter()
            .filter(|rule| applies(rule.agents.as_ref()))
            .find(|rule| rule.matcher.is_match(tool));
        match matched {
            Some(rule) => Verdict {
                requires_approval: rule.requires_approval,
                reason: rule.reason.clone(),
            },
            None if self.unmatched == Unmatched::RequireApproval
                && tools::changes_workspace(tool) =>
            {
                Verdict {
                    requires_approval: true,
                    reason: Some(format!(
                        "{tool} requires user approval (no rule of the HITL policy names it)"
                    )),
                }
            }
            None => Verdict::allow(),
        }
    }
}

/// The agents whose exemptions apply in a session with these switches (oldest first): every
/// agent the user picked (`switch_agent`, `agent_type` on a message), and every agent the
/// router chose for the user's message unless a model's `switch_mode` had sent the session
/// to the router. An agent reached only through `switch_mode` is not among them.
pub fn agents_chosen_by_user(switches: &[AgentSwitch]) -> BTreeSet<AgentKind> {
    let mut chosen = BTreeSet::new();
    // Whether the session reached the router through `switch_mode` (a new one did not).
    let mut after_switch_mode = false;
    for switch in switches {
        let by_user = match switch.method.as_str() {
            "explicit" => true,
            "tool" => false,
            // Routing (`llm`, `fallback`, `single_agent`) classifies the user's own message.
            _ => !after_switch_mode,
        };
        if by_user && let Some(agent) = AgentKind::parse(&switch.to_agent) {
            chosen.insert(agent);
        }
        after_switch_mode = switch.method == "tool";
    }
    chosen
}

fn compile(rule: &HitlRule) -> Result<CompiledRule, String> {
    if rule.pattern.trim().is_empty() {
        return Err("the pattern is empty".to_owned());
    }
    let matcher = Glob::new(&rule.pattern)
        .map_err(|e| format!("bad pattern \"{}\": {e}", rule.pattern))?
        .compile_matcher();
    let agents = match &rule.agents {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|name| {
                    AgentKind::parse(name).ok_or_else(|| {
                        format!(
                            "unknown agent \"{name}\" (expected one of orchestrator, coder, \
                             architect, debug, ask, universal)"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(CompiledRule {
        matcher,
        requires_approval: rule.requires_approval,
        reason: rule.reason.clone(),
        agents,
    })
}

fn default_rules() -> Vec<CompiledRule> {
    DEFAULT_RULES
        .iter()
        .map(|(pattern, requires_approval, reason)| CompiledRule {
            matcher: Glob::new(pattern)
                .expect("the built-in patterns are plain tool names")
                .compile_matcher(),
            requires_approval: *requires_approval,
            reason: reason.map(str::to_owned),
            agents: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "tests own their clock, ids and tasks"
    )]
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn needs_approval(policy: &HitlPolicy, agent: AgentKind, tool: &str) -> bool {
        policy.evaluate(agent, tool).requires_approval
    }

    /// The policy of a file `name` holding `text` (and the dir that holds it).
    fn load(name: &str, text: &str) -> (tempfile::TempDir, HitlPolicy) {
        let (dir, path) = write(name, text);
        (dir, HitlPolicy::load(Some(&path)).unwrap())
    }

    #[test]
    fn the_default_table_is_the_originals() {
        let policy = HitlPolicy::load(None).unwrap();
        let v = policy.evaluate(AgentKind::Coder, "write_file");
        assert!(v.requires_approval);
        assert_eq!(
            v.reason.as_deref(),
            Some("File modification requires user approval")
        );
        assert_eq!(
            policy
                .evaluate(AgentKind::Debug, "execute_command")
                .reason
                .as_deref(),
            Some("Command execution requires user approval")
        );
        assert_eq!(
            policy
                .evaluate(AgentKind::Coder, "create_directory")
                .reason
                .as_deref(),
            Some("Directory creation requires user approval")
        );
        assert!(needs_approval(&policy, AgentKind::Coder, "delete_file"));
        assert!(needs_approval(&policy, AgentKind::Coder, "move_file"));
        for safe in [
            "read_file",
            "list_files",
            "search_files",
            "search_in_code",
            "switch_mode",
        ] {
            assert_eq!(
                policy.evaluate(AgentKind::Coder, safe),
                Verdict::allow(),
                "{safe}"
            );
        }
    }

    #[test]
    fn a_disabled_policy_approves_nothing() {
        let (_dir, policy) = load("p.yaml", "enabled: false\ninclude_defaults: true\n");
        assert!(!needs_approval(&policy, AgentKind::Coder, "write_file"));
    }

    #[test]
    fn yaml_rules_apply_first_match_first_and_per_agent() {
        let (_dir, policy) = load(
            "policy.yml",
            r#"
rules:
  - pattern: write_file
    requires_approval: false
    agents: [architect]
  - pattern: "*_file"
    requires_approval: true
    reason: Files need a look
  - pattern: read_file
    requires_approval: false
  - pattern: "execute_*"
    requires_approval: true
    reason: Commands need a look
"#,
        );
        // The architect-only rule comes first for the architect...
        assert_eq!(
            policy.evaluate(AgentKind::Architect, "write_file"),
            Verdict::allow()
        );
        // ...and is skipped for everyone else.
        let v = policy.evaluate(AgentKind::Coder, "write_file");
        assert!(v.requires_approval);
        assert_eq!(v.reason.as_deref(), Some("Files need a look"));
        // First match wins: `*_file` shadows the later read_file rule.
        assert!(needs_approval(&policy, AgentKind::Coder, "read_file"));
        assert!(needs_approval(&policy, AgentKind::Debug, "execute_command"));
        // Unmatched (the built-in table is replaced, not merged): a workspace-changing tool
        // still needs approval, a read-only one does not.
        let v = policy.evaluate(AgentKind::Coder, "create_directory");
        assert!(v.requires_approval);
        assert_eq!(
            v.reason.as_deref(),
            Some("create_directory requires user approval (no rule of the HITL policy names it)")
        );
        assert_eq!(
            policy.evaluate(AgentKind::Coder, "search_in_code"),
            Verdict::allow()
        );
    }

    #[test]
    fn unmatched_allow_must_be_written_out() {
        let (_dir, policy) = load("p.yaml", "unmatched: allow\nrules: []\n");
        assert_eq!(
            policy.evaluate(AgentKind::Coder, "execute_command"),
            Verdict::allow()
        );
        let (_dir, path) = write("p.yaml", "unmatched: sometimes\n");
        let err = HitlPolicy::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn agent_limited_waivers_are_exemptions_that_need_the_users_choice() {
        let (_dir, policy) = load(
            "p.yaml",
            "include_defaults: true\nrules:\n  - pattern: execute_command\n    \
             requires_approval: false\n    agents: [debug]\n",
        );
        assert_eq!(policy.exemptions(AgentKind::Debug), ["execute_command"]);
        assert!(policy.exemptions(AgentKind::Coder).is_empty());
        assert!(policy.has_exemptions());
        assert!(
            !policy
                .evaluate_in_session(AgentKind::Debug, "execute_command", true)
                .requires_approval
        );
        assert!(
            policy
                .evaluate_in_session(AgentKind::Debug, "execute_command", false)
                .requires_approval
        );
        // A policy that waives approval for everyone has no exemption to protect.
        let (_dir, path) = write("p.yaml", "enabled: false\n");
        assert!(!HitlPolicy::load(Some(&path)).unwrap().has_exemptions());
        assert!(!HitlPolicy::default().has_exemptions());
    }

    fn switch(method: &str, to: &str) -> AgentSwitch {
        AgentSwitch {
            session_id: "s".into(),
            from_agent: None,
            to_agent: to.into(),
            reason: String::new(),
            confidence: None,
            method: method.into(),
            created_at: chrono::Utc::now(),
            complexity: None,
        }
    }

    #[test]
    fn the_user_chooses_agents_by_picking_them_or_by_their_first_message_being_routed() {
        let chosen = |switches: &[AgentSwitch]| {
            agents_chosen_by_user(switches)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(chosen(&[]), []);
        assert_eq!(chosen(&[switch("llm", "debug")]), [AgentKind::Debug]);
        assert_eq!(
            chosen(&[switch("explicit", "ask"), switch("tool", "debug")]),
            [AgentKind::Ask]
        );
        // switch_mode to the router, which then picks debug: still the model's doing.
        assert_eq!(
            chosen(&[
                switch("fallback", "ask"),
                switch("tool", "orchestrator"),
                switch("llm", "debug"),
            ]),
            [AgentKind::Ask]
        );
        // The user sending the session back to the router lets routing choose again.
        assert_eq!(
            chosen(&[
                switch("tool", "debug"),
                switch("explicit", "orchestrator"),
                switch("llm", "debug"),
            ]),
            [AgentKind::Orchestrator, AgentKind::Debug]
        );
    }

    #[test]
    fn json_files_and_include_defaults_work() {
        let (_dir, policy) = load(
            "policy.json",
            r#"{"include_defaults": true, "rules": [{"pattern": "execute_command", "requires_approval": false, "agents": ["debug"]}]}"#,
        );
        assert!(!needs_approval(
            &policy,
            AgentKind::Debug,
            "execute_command"
        ));
        assert!(needs_approval(&policy, AgentKind::Coder, "execute_command"));
        assert!(needs_approval(&policy, AgentKind::Coder, "write_file"));
    }

    #[test]
    fn bad_files_name_the_file_and_the_rule() {
        let (_dir, path) = write(
            "p.yaml",
            "rules:\n  - pattern: read_file\n    requires_approval: false\n  - pattern: x\n    requires_approval: true\n    agents: [wizard]\n",
        );
        let err = HitlPolicy::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("p.yaml") && err.contains("rule 1") && err.contains("wizard"),
            "{err}"
        );

        let (_dir, path) = write(
            "p.yaml",
            "rules:\n  - pattern: \"[\"\n    requires_approval: true\n",
        );
        let err = HitlPolicy::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("rule 0") && err.contains("bad pattern"),
            "{err}"
        );

        let (_dir, path) = write("p.yaml", "rules:\n  - pattern: a\n    approve: true\n");
        let err = HitlPolicy::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("p.yaml") && err.contains("not valid YAML"),
            "{err}"
        );

        let (_dir, path) = write("p.json", "{not json");
        let err = HitlPolicy::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");

        let (_dir, path) = write("p.toml", "");
        assert!(matches!(
            HitlPolicy::load(Some(&path)).unwrap_err(),
            HitlError::Extension { .. }
        ));
        let missing = Path::new("/nonexistent/policy.yaml");
        let err = HitlPolicy::load(Some(missing)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/policy.yaml"), "{err}");
    }
}
