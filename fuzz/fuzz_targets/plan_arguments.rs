//! A plan proposed by the architect (`create_plan`, docs/agent-runtime.md "Planning"): the
//! model's raw arguments through the tool's schema (`tools::validate_arguments`), then
//! `planning::read_plan`, then the order `planning::next_subtask` runs it in.
//!
//! Input: the raw `create_plan` arguments (JSON text).
//!
//! Invariants: no panic; a plan read has 1 to `MAX_SUBTASKS` subtasks, each dependency names
//! another subtask of the plan, listed once; stored as pending subtasks, the plan can start
//! (`next_subtask` is `Some`), and completing whatever `next_subtask` picks finishes every
//! subtask in exactly as many picks as there are subtasks, each picked once, after its
//! dependencies (the dependencies are acyclic, so the order is total).
#![no_main]

use codelab_agent_runtime::planning::{next_subtask, pending_subtasks, read_plan};
use codelab_agent_runtime::tools::validate_arguments;
use codelab_protocol::plans::SubtaskStatus;
use libfuzzer_sys::fuzz_target;

/// The plan size the runtime allows by default (`AGENT_RUNTIME__MAX_PLAN_SUBTASKS`).
const MAX_SUBTASKS: usize = 20;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(arguments) = validate_arguments("create_plan", raw) else {
        return;
    };
    let Ok(plan) = read_plan(&arguments, MAX_SUBTASKS) else {
        return;
    };
    let count = plan.subtasks.len();
    assert!((1..=MAX_SUBTASKS).contains(&count), "{count} subtasks");
    assert!(!plan.title.is_empty());
    for (index, subtask) in plan.subtasks.iter().enumerate() {
        assert!(!subtask.title.is_empty() && !subtask.description.is_empty());
        assert!(subtask.estimated_minutes >= 1);
        for (at, dependency) in subtask.dependencies.iter().enumerate() {
            let dependency = usize::try_from(*dependency).expect("a small index");
            assert!(
                dependency < count,
                "subtask {index} depends on {dependency}"
            );
            assert_ne!(dependency, index, "subtask {index} depends on itself");
            assert!(
                !subtask.dependencies[..at].contains(&subtask.dependencies[at]),
                "subtask {index} lists {dependency} twice"
            );
        }
    }

    // The plan as the engine stores it when approved: every subtask pending.
    let mut stored = pending_subtasks(plan.subtasks);
    assert!(
        next_subtask(&stored).is_some(),
        "an acyclic plan cannot start"
    );
    for pick in 0..count {
        let chosen = next_subtask(&stored)
            .unwrap_or_else(|| panic!("stuck after {pick} of {count} subtasks"));
        let subtask = &stored[chosen];
        assert_eq!(
            subtask.status,
            SubtaskStatus::Pending,
            "subtask {chosen} picked again"
        );
        for dependency in &subtask.dependencies {
            let dependency = usize::try_from(*dependency).expect("checked above");
            assert_eq!(
                stored[dependency].status,
                SubtaskStatus::Completed,
                "subtask {chosen} picked before its dependency {dependency}"
            );
        }
        // Started, then completed: the one in progress is always picked first.
        stored[chosen].status = SubtaskStatus::InProgress;
        assert_eq!(next_subtask(&stored), Some(chosen));
        stored[chosen].status = SubtaskStatus::Completed;
    }
    assert_eq!(next_subtask(&stored), None, "work left after {count} picks");
    assert!(
        stored.iter().all(|s| s.status == SubtaskStatus::Completed),
        "a subtask was never picked"
    );
});
