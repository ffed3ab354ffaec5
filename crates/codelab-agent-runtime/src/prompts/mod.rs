//! System prompts: one minijinja template per agent (`src/prompts/<agent>.md.j2`, built in),
//! each replaceable by a file of the same name in `AGENT_RUNTIME__PROMPTS_DIR`.
//!
//! Templates are compiled and test-rendered at startup, so a broken override stops the
//! service with the file named instead of failing a user's turn later. Variables available:
//! `agent` (wire name), `agent_name` ("Coder Agent"), `tools` (list of tool names offered),
//! `multi_agent_mode` (bool), `workspace` (free text about the workspace, or none),
//! `plan_required` (bool: the request must become a plan first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};

use crate::agents::{AgentKind, tools_of};

/// The built-in templates, by agent.
const BUILTIN: [(AgentKind, &str); 6] = [
    (AgentKind::Orchestrator, include_str!("orchestrator.md.j2")),
    (AgentKind::Coder, include_str!("coder.md.j2")),
    (AgentKind::Architect, include_str!("architect.md.j2")),
    (AgentKind::Debug, include_str!("debug.md.j2")),
    (AgentKind::Ask, include_str!("ask.md.j2")),
    (AgentKind::Universal, include_str!("universal.md.j2")),
];

/// What a prompt is rendered with (the agent's names are added by [`Prompts::render`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromptContext {
    /// Names of the tools offered to the model in this call.
    pub tools: Vec<String>,
    pub multi_agent_mode: bool,
    /// Free text about the workspace (project name, OS, open file...), if the IDE gave any.
    pub workspace: Option<String>,
    /// The request must become a plan (`create_plan`) before anything else.
    pub plan_required: bool,
}

impl PromptContext {
    /// The usual context: the agent's own tool list, no workspace hints.
    pub fn for_agent(kind: AgentKind, multi_agent_mode: bool) -> PromptContext {
        PromptContext {
            tools: tools_of(kind).iter().map(|t| (*t).to_owned()).collect(),
            multi_agent_mode,
            workspace: None,
            plan_required: false,
        }
    }
}

/// A prompt that cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read the prompts folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the prompt template {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error or a failed test render; `template` is the file path of an override.
    #[error("the prompt template {template} is invalid: {message}")]
    Template { template: String, message: String },
    #[error("cannot render the {agent} prompt: {message}")]
    Render { agent: AgentKind, message: String },
}

/// The compiled templates of every agent.
#[derive(Debug)]
pub struct Prompts {
    env: Environment<'static>,
    /// Template name per agent: `builtin/<agent>.md.j2` or the override's path.
    names: HashMap<AgentKind, String>,
}

impl Prompts {
    /// The built-in templates, with `<agent>.md.j2` files of `dir` replacing theirs.
    pub fn load(dir: Option<&Path>) -> Result<Prompts, PromptError> {
        let mut env = Environment::new();
        let mut syntax = SyntaxConfig::builder();
        // Block tags on their own lines leave no blank lines behind in the Markdown.
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(syntax.build().map_err(|e| PromptError::Template {
            template: "(syntax settings)".to_owned(),
            message: e.to_string(),
        })?);
        // Prompts are plain text: never HTML-escape what a template prints.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // A misspelt variable in an override must fail at startup, not print nothing.
        env.set_undefined_behavior(UndefinedBehavior::Strict);

        if let Some(dir) = dir {
            warn_about_unknown_files(dir)?;
        }
        let mut names = HashMap::new();
        for (kind, builtin) in BUILTIN {
            let file_name = format!("{}.md.j2", kind.as_str());
            let override_path = dir.map(|d| d.join(&file_name)).filter(|p| p.is_file());
            let (name, source) = match override_path {
                Some(path) => {
                    let source =
                        std::fs::read_to_string(&path).map_err(|source| PromptError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    (path.display().to_string(), source)
                }
                None => (format!("builtin/{file_name}"), builtin.to_owned()),
            };
            env.add_template_owned(name.clone(), source)
                .map_err(|e| PromptError::Template {
                    template: name.clone(),
                    message: e.to_string(),
                })?;
            names.insert(kind, name);
        }
        let prompts = Prompts { env, names };
        prompts.check_renders()?;
        Ok(prompts)
    }

    /// The system prompt of `kind`.
    pub fn render(&self, kind: AgentKind, ctx: &PromptContext) -> Result<String, PromptError> {
        let render_error = |message: String| PromptError::Render {
            agent: kind,
            message,
        };
        let name = self
            .names
            .get(&kind)
            .ok_or_else(|| render_error("no template loaded".to_owned()))?;
        let template = self
            .env
            .get_template(name)
            .map_err(|e| render_error(e.to_string()))?;
        let workspace = ctx
            .workspace
            .as_deref()
            .map_or(Value::from(()), Value::from);
        let rendered = template
            .render(context! {
                agent => kind.as_str(),
                agent_name => kind.display_name(),
                tools => ctx.tools.clone(),
                multi_agent_mode => ctx.multi_agent_mode,
                workspace => workspace,
                plan_required => ctx.plan_required,
            })
            .map_err(|e| render_error(e.to_string()))?;
        Ok(rendered.trim().to_owned())
    }

    /// The template name in use for `kind` (an override's path, or `builtin/<agent>.md.j2`).
    pub fn source_name(&self, kind: AgentKind) -> Option<&str> {
        self.names.get(&kind).map(String::as_str)
    }

    /// Renders every template once in both modes, with and without workspace hints.
    fn check_renders(&self) -> Result<(), PromptError> {
        for (kind, _) in BUILTIN {
            for multi in [true, false] {
                for workspace in [None, Some("sample workspace".to_owned())] {
                    let ctx = PromptContext {
                        workspace,
                        ..PromptContext::for_agent(kind, multi)
                    };
                    self.render(kind, &ctx).map_err(|e| PromptError::Template {
                        template: self.names.get(&kind).cloned().unwrap_or_default(),
                        message: match e {
                            PromptError::Render { message, .. } => message,
                            other => other.to_string(),
                        },
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// A `*.j2` file that matches no agent is most likely a typo (`codr.md.j2`): say so.
fn warn_about_unknown_files(dir: &Path) -> Result<(), PromptError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PromptError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let known = file_name
            .strip_suffix(".md.j2")
            .is_some_and(|stem| AgentKind::parse(stem).is_some());
        if file_name.ends_with(".j2") && !known {
            tracing::warn!(
                file = %entry.path().display(),
                "prompt template does not match any agent (expected <agent>.md.j2) and is ignored"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompt of `kind` in multi-agent mode.
    fn render_multi(prompts: &Prompts, kind: AgentKind) -> String {
        prompts
            .render(kind, &PromptContext::for_agent(kind, true))
            .unwrap()
    }

    #[test]
    fn every_builtin_prompt_renders_with_its_tools() {
        let prompts = Prompts::load(None).unwrap();
        for kind in AgentKind::ALL {
            let ctx = PromptContext::for_agent(kind, true);
            let text = prompts.render(kind, &ctx).unwrap();
            assert!(
                text.starts_with(&format!("You are the {}", kind.display_name())),
                "{text}"
            );
            for tool in tools_of(kind) {
                assert!(
                    text.contains(&format!("- {tool}\n")) || text.ends_with(&format!("- {tool}")),
                    "{kind}: {tool}"
                );
            }
            assert!(
                !text.contains("\n\n\n"),
                "{kind} leaves blank runs:\n{text}"
            );
        }
    }

    #[test]
    fn prompts_state_the_agents_rules() {
        let prompts = Prompts::load(None).unwrap();
        let render = |kind| render_multi(&prompts, kind);
        assert!(render(AgentKind::Architect).contains("Markdown files only"));
        assert!(render(AgentKind::Debug).contains("never modify files"));
        assert!(render(AgentKind::Ask).contains("mode `architect`"));
        assert!(render(AgentKind::Coder).contains("one step at a time"));
        assert!(render(AgentKind::Coder).contains("Several tool calls in one reply"));
        let single = prompts
            .render(
                AgentKind::Orchestrator,
                &PromptContext::for_agent(AgentKind::Orchestrator, false),
            )
            .unwrap();
        assert!(single.contains("universal"));
    }

    #[test]
    fn workspace_hints_are_rendered_when_given() {
        let prompts = Prompts::load(None).unwrap();
        let ctx = PromptContext {
            workspace: Some("Flutter app on macOS".into()),
            ..PromptContext::for_agent(AgentKind::Coder, true)
        };
        let text = prompts.render(AgentKind::Coder, &ctx).unwrap();
        assert!(
            text.ends_with("## Workspace\nFlutter app on macOS"),
            "{text}"
        );
        let without = render_multi(&prompts, AgentKind::Coder);
        assert!(!without.contains("## Workspace"));
    }

    #[test]
    fn a_file_in_the_prompts_dir_replaces_that_agent_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("coder.md.j2"),
            "Custom {{ agent_name }} with {{ tools | length }} tools{% if workspace %} in {{ workspace }}{% endif %}.",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let prompts = Prompts::load(Some(dir.path())).unwrap();
        let text = render_multi(&prompts, AgentKind::Coder);
        assert_eq!(text, "Custom Coder Agent with 8 tools.");
        assert!(
            prompts
                .source_name(AgentKind::Coder)
                .unwrap()
                .ends_with("coder.md.j2")
        );
        assert_eq!(
            prompts.source_name(AgentKind::Debug),
            Some("builtin/debug.md.j2")
        );
        let debug = render_multi(&prompts, AgentKind::Debug);
        assert!(debug.starts_with("You are the Debug Agent"));
    }

    #[test]
    fn a_broken_override_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("architect.md.j2");
        std::fs::write(&path, "Hello {% if agent %}unclosed").unwrap();
        let err = Prompts::load(Some(dir.path())).unwrap_err();
        assert!(matches!(err, PromptError::Template { .. }));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn an_unknown_variable_in_an_override_fails_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ask.md.j2");
        std::fs::write(&path, "Hello {{ agnet_name }}").unwrap();
        let text = Prompts::load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            text.contains("ask.md.j2") && text.contains("undefined"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_prompts_dir_is_an_error() {
        let err = Prompts::load(Some(Path::new("/nonexistent/prompts"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/prompts"), "{err}");
    }
}
