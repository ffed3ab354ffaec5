//! Plans without I/O (`docs/agent-runtime.md`, "Planning"): reading the architect's
//! `create_plan` arguments into a plan that can run (the schema is checked before, in
//! `tools.rs`; here what a schema cannot say: a known agent, dependencies that exist and form
//! no cycle, a bounded size), choosing the next subtask to run, the focused context a subtask's
//! agent gets, and the texts that close a plan's run.

use codelab_protocol::plans::{PlanVersionView, PlanView, SubtaskStatus, SubtaskView};
use serde_json::Value;

use crate::agents::AgentKind;
use crate::model::{Plan, PlanVersion, Subtask};

/// The highest `AGENT_RUNTIME__MAX_PLAN_SUBTASKS` accepted.
pub const MAX_PLAN_SUBTASKS_CAP: u32 = 100;

/// How many characters of a dependency's result a subtask's context quotes, and of a
/// subtask's result the final summary quotes.
const RESULT_QUOTE_CHARS: usize = 2_000;
const SUMMARY_QUOTE_CHARS: usize = 300;

/// The agents a subtask may name.
pub const SUBTASK_AGENTS: [AgentKind; 3] = [AgentKind::Coder, AgentKind::Debug, AgentKind::Ask];

/// One subtask as the architect proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedSubtask {
    pub title: String,
    pub description: String,
    pub agent: AgentKind,
    pub estimated_minutes: u32,
    pub dependencies: Vec<u32>,
}

/// A plan as the architect proposed it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedPlan {
    pub title: String,
    pub description: String,
    pub subtasks: Vec<ProposedSubtask>,
}

/// Reads `create_plan` arguments (already valid against the tool's schema, but read
/// defensively: they come from a model). The error is meant for the model, which gets it as
/// the tool's result and may try again.
pub fn read_plan(arguments: &Value, max_subtasks: usize) -> Result<ProposedPlan, String> {
    let text = |value: &Value, key: &str| -> Result<String, String> {
        match value.get(key) {
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            _ => Err(format!("\"{key}\" must be a non-empty string")),
        }
    };
    let title = text(arguments, "title")?;
    let description = match arguments.get("description") {
        Some(Value::String(text)) => text.trim().to_owned(),
        _ => String::new(),
    };
    let Some(items) = arguments.get("subtasks").and_then(Value::as_array) else {
        return Err("\"subtasks\" must be an array of subtasks".to_owned());
    };
    if items.is_empty() {
        return Err("a plan needs at least one subtask".to_owned());
    }
    if items.len() > max_subtasks {
        return Err(format!(
            "a plan may have at most {max_subtasks} subtasks, this one has {}; merge some",
            items.len()
        ));
    }
    let count = items.len();
    let mut subtasks = Vec::with_capacity(count);
    for (index, item) in items.iter().enumerate() {
        let at = |problem: String| format!("subtask {index}: {problem}");
        let title = text(item, "title").map_err(at)?;
        let description = text(item, "description").map_err(at)?;
        let agent_name = item.get("agent").and_then(Value::as_str).unwrap_or("");
        let agent = AgentKind::parse(agent_name)
            .filter(|kind| SUBTASK_AGENTS.contains(kind))
            .ok_or_else(|| {
                at(format!(
                    "\"agent\" must be coder, debug or ask, got \"{agent_name}\""
                ))
            })?;
        let estimated_minutes = item
            .get("estimated_time_minutes")
            .and_then(Value::as_u64)
            .filter(|minutes| *minutes >= 1)
            .and_then(|minutes| u32::try_from(minutes).ok())
            .ok_or_else(|| {
                at(
                    "\"estimated_time_minutes\" must be a whole number of minutes, at least 1"
                        .to_owned(),
                )
            })?;
        let mut dependencies = Vec::new();
        if let Some(listed) = item.get("dependencies") {
            let Some(listed) = listed.as_array() else {
                return Err(at(
                    "\"dependencies\" must be an array of subtask indices".to_owned()
                ));
            };
            for dependency in listed {
                let Some(target) = dependency.as_u64().and_then(|d| u32::try_from(d).ok()) else {
                    return Err(at(format!(
                        "dependency {dependency} is not a subtask index (0-based)"
                    )));
                };
                if usize::try_from(target).map_or(true, |t| t >= count) {
                    return Err(at(format!(
                        "dependency {target} names no subtask (the plan has {count}, numbered \
                         from 0)"
                    )));
                }
                if usize::try_from(target) == Ok(index) {
                    return Err(at("a subtask cannot depend on itself".to_owned()));
                }
                if !dependencies.contains(&target) {
                    dependencies.push(target);
                }
            }
        }
        subtasks.push(ProposedSubtask {
            title,
            description,
            agent,
            estimated_minutes,
            dependencies,
        });
    }
    if let Some(cycle) = find_cycle(&subtasks) {
        let names: Vec<String> = cycle.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the dependencies form a cycle ({}): no order can satisfy them",
            names.join(" -> ")
        ));
    }
    Ok(ProposedPlan {
        title,
        description,
        subtasks,
    })
}

/// Subtask indices that depend on each other in a circle, when there are some.
fn find_cycle(subtasks: &[ProposedSubtask]) -> Option<Vec<usize>> {
    // Depth-first search with colours: 0 unvisited, 1 on the current path, 2 finished.
    let mut colour = vec![0u8; subtasks.len()];
    let mut path: Vec<usize> = Vec::new();
    for start in 0..subtasks.len() {
        if colour[start] != 0 {
            continue;
        }
        // (node, next dependency to look at)
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        path.push(start);
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            let dependencies = &subtasks[node].dependencies;
            if *next < dependencies.len() {
                let target = usize::try_from(dependencies[*next]).unwrap_or(usize::MAX);
                *next += 1;
                match colour.get(target) {
                    Some(0) => {
                        colour[target] = 1;
                        path.push(target);
                        stack.push((target, 0));
                    }
                    Some(1) => {
                        let from = path.iter().position(|n| *n == target).unwrap_or(0);
                        let mut cycle = path[from..].to_vec();
                        cycle.push(target);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                path.pop();
                stack.pop();
            }
        }
    }
    None
}

/// A proposed plan's subtasks as stored before anything ran: pending, in order, their
/// positions their indices.
pub fn pending_subtasks(proposed: Vec<ProposedSubtask>) -> Vec<Subtask> {
    proposed
        .into_iter()
        .enumerate()
        .map(|(position, subtask)| Subtask {
            position: i32::try_from(position).unwrap_or(i32::MAX),
            title: subtask.title,
            description: subtask.description,
            agent: subtask.agent.as_str().to_owned(),
            estimated_minutes: i32::try_from(subtask.estimated_minutes).unwrap_or(i32::MAX),
            dependencies: subtask
                .dependencies
                .into_iter()
                .filter_map(|d| i32::try_from(d).ok())
                .collect(),
            status: SubtaskStatus::Pending,
            result: None,
            error: None,
            context_from: None,
            first_step: None,
        })
        .collect()
}

/// The subtask to run next: the one in progress, else the first pending one (in list order)
/// whose dependencies are all done. `None` when nothing can run.
pub fn next_subtask(subtasks: &[Subtask]) -> Option<usize> {
    if let Some(running) = subtasks
        .iter()
        .position(|s| s.status == SubtaskStatus::InProgress)
    {
        return Some(running);
    }
    subtasks.iter().position(|subtask| {
        subtask.status == SubtaskStatus::Pending
            && subtask.dependencies.iter().all(|dependency| {
                subtasks
                    .iter()
                    .find(|other| other.position == *dependency)
                    .is_some_and(|other| other.status.is_done())
            })
    })
}

/// The first message of a subtask's own context: the plan in short, the subtask in full, and
/// what the subtasks it depends on produced — not the whole conversation. The subtask's
/// description gets lines of its own (the mock model reads `::` directives at line starts).
pub fn subtask_prompt(plan: &Plan, subtask: &Subtask) -> String {
    let mut text = format!(
        "You are carrying out one subtask of an approved plan.\n\nPlan: {}\n",
        plan.title
    );
    if !plan.description.is_empty() {
        text.push_str(&format!("Goal: {}\n", one_line(&plan.description)));
    }
    text.push_str("Subtasks:\n");
    for other in &plan.subtasks {
        let marker = if other.position == subtask.position {
            " <- yours"
        } else {
            ""
        };
        text.push_str(&format!(
            "{}. {} [{}]{marker}\n",
            other.position + 1,
            one_line(&other.title),
            other.status.as_str()
        ));
    }
    text.push_str(&format!(
        "\nYour subtask ({}): {}\n{}\n",
        subtask.position + 1,
        subtask.title,
        subtask.description
    ));
    let done: Vec<&Subtask> = plan
        .subtasks
        .iter()
        .filter(|other| subtask.dependencies.contains(&other.position))
        .collect();
    if !done.is_empty() {
        text.push_str("\nResults of the subtasks it depends on:\n");
        for other in done {
            let result = match other.status {
                SubtaskStatus::Skipped => "(skipped)".to_owned(),
                _ => quote(other.result.as_deref().unwrap_or(""), RESULT_QUOTE_CHARS),
            };
            text.push_str(&format!(
                "- {}. {}: {}\n",
                other.position + 1,
                one_line(&other.title),
                one_line(&result)
            ));
        }
    }
    text.push_str(
        "\nDo this subtask only. When it is done, call attempt_completion with what you did.",
    );
    text
}

/// The assistant message that closes a completed plan's run.
pub fn completed_summary(plan: &Plan) -> String {
    let mut text = format!("Plan \"{}\" completed.\n", plan.title);
    for subtask in &plan.subtasks {
        let outcome = match subtask.status {
            SubtaskStatus::Completed => format!(
                "done: {}",
                one_line(&quote(
                    subtask.result.as_deref().unwrap_or(""),
                    SUMMARY_QUOTE_CHARS
                ))
            ),
            other => other.as_str().to_owned(),
        };
        text.push_str(&format!(
            "{}. {} ({}) {}\n",
            subtask.position + 1,
            one_line(&subtask.title),
            subtask.agent,
            outcome
        ));
    }
    text
}

/// The assistant message that says a plan stopped at a failed subtask, and what to do.
pub fn failed_summary(plan: &Plan, subtask: &Subtask, error: &str) -> String {
    format!(
        "Plan \"{}\" stopped: subtask {} ({}) failed: {}\nRetry it, skip it or cancel the plan.",
        plan.title,
        subtask.position + 1,
        one_line(&subtask.title),
        one_line(error)
    )
}

/// A plan as clients see it.
pub fn view(plan: &Plan) -> PlanView {
    PlanView {
        id: plan.id.clone(),
        session_id: plan.session_id.clone(),
        version: u32::try_from(plan.version).unwrap_or(1),
        title: plan.title.clone(),
        description: plan.description.clone(),
        status: plan.status,
        approval_request_id: plan.call_id.clone(),
        created_at: crate::handlers::time(plan.created_at),
        updated_at: crate::handlers::time(plan.updated_at),
        feedback: plan.feedback.clone(),
        summary: plan.summary.clone(),
        subtasks: plan
            .subtasks
            .iter()
            .map(|subtask| SubtaskView {
                id: u32::try_from(subtask.position).unwrap_or(0),
                title: subtask.title.clone(),
                description: subtask.description.clone(),
                agent: subtask.agent.clone(),
                estimated_time_minutes: u32::try_from(subtask.estimated_minutes).unwrap_or(1),
                dependencies: subtask
                    .dependencies
                    .iter()
                    .filter_map(|d| u32::try_from(*d).ok())
                    .collect(),
                status: subtask.status,
                result: subtask.result.clone(),
                error: subtask.error.clone(),
            })
            .collect(),
        versions: Vec::new(),
    }
}

/// The versions of a plan as clients see them.
pub fn version_views(versions: &[PlanVersion]) -> Vec<PlanVersionView> {
    versions
        .iter()
        .map(|version| PlanVersionView {
            version: u32::try_from(version.version).unwrap_or(1),
            title: version.title.clone(),
            description: version.description.clone(),
            subtasks: version.subtasks.clone(),
            feedback: version.feedback.clone(),
            created_at: crate::handlers::time(version.created_at),
        })
        .collect()
}

/// `text` on one line (newlines as spaces), for lists.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `limit` characters of `text`, marked when cut.
fn quote(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subtask(title: &str, agent: &str, dependencies: Value) -> Value {
        json!({
            "title": title,
            "description": format!("do {title}"),
            "agent": agent,
            "estimated_time_minutes": 5,
            "dependencies": dependencies,
        })
    }

    fn plan_of(subtasks: Vec<Value>) -> Value {
        json!({"title": "T", "description": "D", "subtasks": subtasks})
    }

    #[test]
    fn a_valid_plan_is_read_in_order() {
        let plan = read_plan(
            &plan_of(vec![
                subtask("a", "coder", json!([])),
                subtask("b", "debug", json!([0])),
                subtask("c", "ask", json!([0, 1, 1])),
            ]),
            20,
        )
        .unwrap();
        assert_eq!(plan.title, "T");
        assert_eq!(plan.subtasks.len(), 3);
        assert_eq!(plan.subtasks[1].agent, AgentKind::Debug);
        assert_eq!(
            plan.subtasks[2].dependencies,
            vec![0, 1],
            "duplicates dropped"
        );
    }

    #[test]
    fn what_a_schema_cannot_refuse_is_refused_with_a_reason() {
        let cases = [
            (plan_of(vec![]), "at least one subtask"),
            (
                plan_of(vec![subtask("a", "architect", json!([]))]),
                "must be coder, debug or ask",
            ),
            (
                plan_of(vec![subtask("a", "coder", json!([3]))]),
                "dependency 3 names no subtask",
            ),
            (
                plan_of(vec![subtask("a", "coder", json!([0]))]),
                "cannot depend on itself",
            ),
            (
                plan_of(vec![
                    subtask("a", "coder", json!([2])),
                    subtask("b", "coder", json!([0])),
                    subtask("c", "coder", json!([1])),
                ]),
                "cycle (0 -> 2 -> 1 -> 0)",
            ),
            (
                plan_of(vec![subtask("a", "coder", json!([-1]))]),
                "is not a subtask index",
            ),
            (json!({"title": " ", "subtasks": []}), "\"title\" must be"),
            (
                plan_of(vec![
                    json!({"title": "a", "description": "x", "agent": "coder"}),
                ]),
                "estimated_time_minutes",
            ),
        ];
        for (arguments, expected) in cases {
            let error = read_plan(&arguments, 20).unwrap_err();
            assert!(error.contains(expected), "{arguments}: {error}");
        }
        let many: Vec<Value> = (0..4)
            .map(|i| subtask(&i.to_string(), "coder", json!([])))
            .collect();
        let error = read_plan(&plan_of(many), 3).unwrap_err();
        assert!(error.contains("at most 3 subtasks"), "{error}");
    }

    fn stored(position: i32, status: SubtaskStatus, dependencies: Vec<i32>) -> Subtask {
        Subtask {
            position,
            title: format!("s{position}"),
            description: String::new(),
            agent: "coder".into(),
            estimated_minutes: 1,
            dependencies,
            status,
            result: Some(format!("r{position}")),
            error: None,
            context_from: None,
            first_step: None,
        }
    }

    #[test]
    fn the_next_subtask_waits_for_its_dependencies() {
        use SubtaskStatus::*;
        let plan = [
            stored(0, Pending, vec![1]),
            stored(1, Pending, vec![]),
            stored(2, Pending, vec![]),
        ];
        assert_eq!(next_subtask(&plan), Some(1), "0 waits for 1");
        let plan = [
            stored(0, Pending, vec![1]),
            stored(1, Skipped, vec![]),
            stored(2, InProgress, vec![]),
        ];
        assert_eq!(next_subtask(&plan), Some(2), "the one running comes first");
        let plan = [stored(0, Pending, vec![1]), stored(1, Failed, vec![])];
        assert_eq!(next_subtask(&plan), None, "a failed dependency blocks");
        let plan = [stored(0, Completed, vec![]), stored(1, Completed, vec![0])];
        assert_eq!(next_subtask(&plan), None, "all done");
    }

    #[test]
    fn a_subtask_sees_the_plan_its_task_and_its_dependencies_results_only() {
        use SubtaskStatus::*;
        let now = chrono::DateTime::UNIX_EPOCH;
        let plan = Plan {
            id: "p".into(),
            session_id: "s".into(),
            version: 1,
            title: "Ship it".into(),
            description: "All of it".into(),
            status: codelab_protocol::plans::PlanStatus::InProgress,
            call_id: "c".into(),
            turn_id: "t".into(),
            feedback: None,
            summary: None,
            created_at: now,
            updated_at: now,
            subtasks: vec![
                stored(0, Completed, vec![]),
                stored(1, Completed, vec![]),
                Subtask {
                    description: "::tool read_file {\"path\": \"a\"}".into(),
                    ..stored(2, InProgress, vec![0])
                },
            ],
        };
        let prompt = subtask_prompt(&plan, &plan.subtasks[2]);
        assert!(
            prompt.contains("\n::tool read_file {\"path\": \"a\"}\n"),
            "{prompt}"
        );
        assert!(prompt.contains("- 1. s0: r0"), "{prompt}");
        assert!(!prompt.contains("r1"), "not a dependency: {prompt}");
        assert!(prompt.contains("3. s2 [in_progress] <- yours"), "{prompt}");
        let summary = completed_summary(&plan);
        assert!(summary.starts_with("Plan \"Ship it\" completed.\n1. s0 (coder) done: r0\n"));
    }
}
