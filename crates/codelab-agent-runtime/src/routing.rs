//! Orchestrator routing of a session's first message (`docs/agent-runtime.md`, "Routing"): one LLM
//! classification call, and the original's keyword table when the model gives no usable
//! answer. Single-agent mode routes everything to `universal` without asking the model.

use std::time::Duration;

use codelab_protocol::openai::{ChatCompletionRequest, ChatMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agents::AgentKind;
use crate::llm::{CallMeter, LlmClient, LlmError, Meter};

/// Temperature of the classification call (the original's).
pub const CLASSIFICATION_TEMPERATURE: f64 = 0.3;
/// Pause before the one retry of a failed classification.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The classifier's instructions; the user's message follows verbatim as the last (and only)
/// user message, so the mock model's `::` directives in it apply.
const CLASSIFIER_PROMPT: &str = "You are a task classifier for a coding assistant. Read the \
user's request and choose the one agent that should handle it:
- coder: writing, creating, implementing, fixing, modifying or refactoring code; running commands or tests.
- architect: designing systems, planning features, writing specifications, architecture or other documentation.
- debug: investigating errors, bugs, crashes, failing tests or unexpected behaviour.
- ask: explaining code or concepts, answering questions, helping the user understand.
Also judge the request's size: \"complex\" when it needs several pieces of work that build on \
each other (a new application or feature across several files, a system design, a migration), \
\"atomic\" when one agent can do it in one go (a fix, an explanation, one change).
Respond with JSON only, no other text:
{\"agent\": \"coder|architect|debug|ask\", \"complexity\": \"atomic|complex\", \"confidence\": \"high|medium|low\", \"reasoning\": \"one short sentence\"}";

/// The original planning branch's keywords for a complex request (`docs/agent-runtime.md`,
/// "Planning"), English and Russian; checked after the atomic ones.
const COMPLEX_KEYWORDS: [&str; 14] = [
    "create app",
    "create an app",
    "build system",
    "build a system",
    "architecture",
    "multiple files",
    "several files",
    "from scratch",
    "end to end",
    "создай приложение",
    "создать приложение",
    "архитектур",
    "несколько файлов",
    "с нуля",
];

/// Keywords of a request one agent does in one go; they win over the complex ones.
const ATOMIC_KEYWORDS: [&str; 6] = [
    "fix bug in",
    "explain",
    "what is",
    "исправь ошибку",
    "объясни",
    "что такое",
];

/// The original's keyword table (`docs/agent-runtime.md`, "Routing"), checked in this order;
/// the first hit wins.
const KEYWORDS: [(AgentKind, &[&str]); 4] = [
    (
        AgentKind::Coder,
        &[
            "create",
            "write",
            "implement",
            "fix",
            "code",
            "refactor",
            "modify",
        ],
    ),
    (
        AgentKind::Architect,
        &["design", "architecture", "plan", "spec", "blueprint"],
    ),
    (
        AgentKind::Debug,
        &[
            "debug",
            "error",
            "bug",
            "problem",
            "why",
            "investigate",
            "crash",
        ],
    ),
    (
        AgentKind::Ask,
        &["explain", "what is", "how does", "help", "understand"],
    ),
];

/// How a routing decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMethod {
    /// The model classified the message.
    Llm,
    /// The keyword table decided (the model failed or answered nonsense).
    Fallback,
    /// Single-agent mode: always `universal`.
    SingleAgent,
}

impl RoutingMethod {
    /// `llm`, `fallback` or `single_agent` (as stored with the switch).
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMethod::Llm => "llm",
            RoutingMethod::Fallback => "fallback",
            RoutingMethod::SingleAgent => "single_agent",
        }
    }
}

/// Where a new session's task goes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutingDecision {
    pub agent: AgentKind,
    /// `high`, `medium` or `low` (whatever the model said; `low` for the fallback).
    pub confidence: String,
    pub reason: String,
    pub method: RoutingMethod,
    /// The request needs a plan (the model's verdict, else the keyword table's).
    pub complex: bool,
    /// Why the model's answer was not used (fallback only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The model's answer, as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Classification {
    pub agent: String,
    /// `atomic` or `complex`; absent or anything else: the keyword table decides.
    #[serde(default)]
    pub complexity: Option<String>,
    #[serde(default)]
    pub confidence: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
}

/// Decides which agent takes `message`. In single-agent mode: `universal`, no LLM call.
/// Otherwise one classification call with `model` (each attempt bounded by `timeout`, one
/// retry on connect errors, timeouts, 429 and 5xx), then the keyword table if the answer is
/// missing, unparsable or names no specialist. Never fails.
pub async fn classify(
    llm: &LlmClient,
    model: &str,
    message: &str,
    multi_agent: bool,
    timeout: Duration,
) -> RoutingDecision {
    classify_metered(llm, model, message, multi_agent, timeout)
        .await
        .0
}

/// [`classify`], with the classification calls it made (none in single-agent mode, two when
/// it retried) for the usage records.
pub async fn classify_metered(
    llm: &LlmClient,
    model: &str,
    message: &str,
    multi_agent: bool,
    timeout: Duration,
) -> (RoutingDecision, Vec<CallMeter>) {
    if !multi_agent {
        let decision = RoutingDecision {
            agent: AgentKind::Universal,
            confidence: "high".to_owned(),
            reason: "single-agent mode: the universal agent handles every task".to_owned(),
            method: RoutingMethod::SingleAgent,
            complex: false,
            error: None,
        };
        return (decision, Vec::new());
    }
    let mut calls = Vec::new();
    let decision = match ask_model(llm, model, message, timeout, &mut calls).await {
        Ok(content) => match parse_classification(&content) {
            Some(answer) => match agent_from_answer(&answer.agent) {
                Some(agent) => RoutingDecision {
                    agent,
                    confidence: answer
                        .confidence
                        .filter(|c| !c.trim().is_empty())
                        .unwrap_or_else(|| "medium".to_owned()),
                    reason: answer
                        .reasoning
                        .filter(|r| !r.trim().is_empty())
                        .unwrap_or_else(|| "classified by the model".to_owned()),
                    method: RoutingMethod::Llm,
                    complex: match answer.complexity.as_deref().map(str::trim) {
                        Some("complex") => true,
                        Some("atomic") => false,
                        _ => keyword_complexity(message),
                    },
                    error: None,
                },
                None => fallback(
                    message,
                    format!("the classifier chose an unknown agent \"{}\"", answer.agent),
                ),
            },
            None => fallback(
                message,
                "the classifier's answer is not the expected JSON".to_owned(),
            ),
        },
        Err(error) => fallback(message, format!("the classification call failed: {error}")),
    };
    tracing::info!(
        agent = decision.agent.as_str(),
        method = decision.method.as_str(),
        error = decision.error.as_deref().unwrap_or(""),
        "routed a new task"
    );
    (decision, calls)
}

/// The classification call: at most two attempts, each within `timeout`.
async fn ask_model(
    llm: &LlmClient,
    model: &str,
    message: &str,
    timeout: Duration,
    calls: &mut Vec<CallMeter>,
) -> Result<String, LlmError> {
    // Our own single retry replaces the client's, so a failing proxy costs two calls, not six.
    let llm = llm.clone().with_retries(0, Duration::ZERO);
    let request = ChatCompletionRequest {
        model: model.to_owned(),
        messages: vec![
            ChatMessage::text("system", CLASSIFIER_PROMPT),
            ChatMessage::text("user", message),
        ],
        temperature: Some(CLASSIFICATION_TEMPERATURE),
        ..ChatCompletionRequest::default()
    };
    let mut attempt = 0;
    loop {
        let mut meter = Meter::start(model);
        let result =
            tokio::time::timeout(timeout, llm.complete_metered(request.clone(), &mut meter))
                .await
                .unwrap_or(Err(LlmError::Timeout));
        calls.push(meter.finish(&result));
        match result {
            Ok(completion) => return Ok(completion.content),
            Err(error) if attempt == 0 && error.is_transient() => {
                tracing::debug!(error = %error, "retrying the classification call");
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A specialist named by the model; `universal` means the coder in multi-agent mode (the
/// original switched to an unregistered agent there).
fn agent_from_answer(name: &str) -> Option<AgentKind> {
    match AgentKind::parse(&name.trim().to_ascii_lowercase())? {
        AgentKind::Universal => Some(AgentKind::Coder),
        AgentKind::Orchestrator => None,
        agent => Some(agent),
    }
}

fn fallback(message: &str, error: String) -> RoutingDecision {
    let (agent, keyword) = keyword_route(message);
    let why = match keyword {
        Some(keyword) => format!("matched \"{keyword}\""),
        None => "no keyword matched".to_owned(),
    };
    RoutingDecision {
        agent,
        confidence: "low".to_owned(),
        reason: format!("keyword fallback ({why}) because the LLM classification was unusable"),
        method: RoutingMethod::Fallback,
        complex: keyword_complexity(message),
        error: Some(error),
    }
}

/// The message's lines that do not start with `::` (mock directives), lower-cased.
fn classified_text(message: &str) -> String {
    message
        .lines()
        .filter(|line| !line.trim_start().starts_with("::"))
        .collect::<Vec<_>>()
        .join("\n")
        .to_lowercase()
}

/// The keyword verdict on a request's size: an atomic keyword wins, then a complex one; a
/// request without either is atomic (a plan costs the user a decision, so it is never the
/// guess).
pub fn keyword_complexity(message: &str) -> bool {
    let text = classified_text(message);
    if ATOMIC_KEYWORDS.iter().any(|w| text.contains(w)) {
        return false;
    }
    COMPLEX_KEYWORDS.iter().any(|w| text.contains(w))
}

/// Whether the user asked for a plan in so many words: the first line that is not a `::`
/// directive starts with `plan this`, `plan:`, `/plan`, `make a plan`, `create a plan` or
/// `write a plan` (or `составь план`, `спланируй`), in any case.
pub fn asks_for_plan(message: &str) -> bool {
    let text = classified_text(message);
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    [
        "plan this",
        "plan:",
        "/plan",
        "make a plan",
        "create a plan",
        "write a plan",
        "составь план",
        "спланируй",
    ]
    .iter()
    .any(|start| first.starts_with(start))
}

/// The keyword table on the message's lines that do not start with `::` (mock
/// directives), lower-cased, substring match, first hit in agent order; none → coder. Returns
/// the keyword that decided, if any.
pub fn keyword_route(message: &str) -> (AgentKind, Option<&'static str>) {
    let text = classified_text(message);
    for (agent, words) in KEYWORDS {
        if let Some(word) = words.iter().find(|w| text.contains(*w)) {
            return (agent, Some(word));
        }
    }
    (AgentKind::Coder, None)
}

/// Reads the classifier's answer: raw JSON, else a ```` ```json ```` block, else the first
/// ```` ``` ```` block, else the outermost `{...}` in the text.
pub fn parse_classification(content: &str) -> Option<Classification> {
    let content = content.trim();
    let candidates = [
        Some(content),
        fenced_block(content, "```json"),
        fenced_block(content, "```"),
        outer_braces(content),
    ];
    candidates.into_iter().flatten().find_map(|candidate| {
        let value: Value = serde_json::from_str(candidate.trim()).ok()?;
        serde_json::from_value::<Classification>(value).ok()
    })
}

/// The text between `opening` and the next ```` ``` ````; for a bare fence, a language tag
/// on the opening line is skipped.
fn fenced_block<'a>(content: &'a str, opening: &str) -> Option<&'a str> {
    let start = content.find(opening)? + opening.len();
    let rest = &content[start..];
    let end = rest.find("```")?;
    let block = &rest[..end];
    if opening == "```" {
        // ```yaml\n{...}: drop a tag such as `yaml` (but not JSON that starts on that line).
        if let Some((first, body)) = block.split_once('\n')
            && !first.trim_start().starts_with('{')
        {
            return Some(body);
        }
    }
    Some(block)
}

fn outer_braces(content: &str) -> Option<&str> {
    let start = content.find('{')?;
    let end = content.rfind('}')?;
    (start < end).then(|| &content[start..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifications_are_read_raw_fenced_or_embedded() {
        let want = Some(Classification {
            agent: "debug".into(),
            complexity: None,
            confidence: Some("high".into()),
            reasoning: Some("crash".into()),
        });
        let json = r#"{"agent":"debug","confidence":"high","reasoning":"crash"}"#;
        assert_eq!(parse_classification(json), want);
        assert_eq!(
            parse_classification(&format!("Sure:\n```json\n{json}\n```\nDone")),
            want
        );
        assert_eq!(parse_classification(&format!("```\n{json}\n```")), want);
        assert_eq!(parse_classification(&format!("```text\n{json}\n```")), want);
        assert_eq!(
            parse_classification(&format!("I pick {json} for you")),
            want
        );
        assert_eq!(
            parse_classification(r#"{"agent":"ask"}"#).map(|c| c.confidence),
            Some(None)
        );
        assert_eq!(parse_classification("coder"), None);
        assert_eq!(parse_classification(r#"{"choice":"coder"}"#), None);
        assert_eq!(parse_classification(""), None);
    }

    #[test]
    fn keywords_follow_the_spec_table_in_agent_order() {
        let cases = [
            (
                "Please implement a parser",
                AgentKind::Coder,
                Some("implement"),
            ),
            ("fix the bug", AgentKind::Coder, Some("fix")),
            (
                "Design the architecture",
                AgentKind::Architect,
                Some("design"),
            ),
            ("why does it crash?", AgentKind::Debug, Some("why")),
            ("What is a monad?", AgentKind::Ask, Some("what is")),
            ("How does this work", AgentKind::Ask, Some("how does")),
            ("hello there", AgentKind::Coder, None),
        ];
        for (message, agent, keyword) in cases {
            assert_eq!(keyword_route(message), (agent, keyword), "{message}");
        }
    }

    #[test]
    fn directive_lines_are_ignored_by_the_keywords() {
        assert_eq!(
            keyword_route("::tool write_file {}\nplease explain this"),
            (AgentKind::Ask, Some("explain"))
        );
        assert_eq!(
            keyword_route("::reply explain why\n::step 2 ::reply debug"),
            (AgentKind::Coder, None)
        );
    }

    #[test]
    fn answers_map_to_specialists() {
        assert_eq!(agent_from_answer(" Architect "), Some(AgentKind::Architect));
        assert_eq!(agent_from_answer("universal"), Some(AgentKind::Coder));
        assert_eq!(agent_from_answer("orchestrator"), None);
        assert_eq!(agent_from_answer("wizard"), None);
    }
}
