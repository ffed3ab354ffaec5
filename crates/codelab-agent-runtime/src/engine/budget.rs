//! The budget check before each LLM step (docs/usage.md, "Budgets"): the session owner's
//! budget against what their calls used, read fresh each time, so a limit set while the server
//! runs applies from the next step.
//!
//! A step's calls are stored with the step (`TurnLoop::commit`) before the same turn checks
//! again, so a turn never starts a step on a spend it has not counted. Turns running at once
//! each check the stored spend: each may start one step before another's is stored, so a budget
//! is overshot by at most one step per concurrent turn.

use codelab_protocol::runtime::RuntimeEvent;

use super::EngineError;
use super::turn::TurnLoop;
use crate::budgets;
use crate::metrics;
use crate::model::OwnerBudget;

/// The `error_code` of the error that ends a turn over budget.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
/// The `code` of the warning sent once when a day's or a month's budget is 80% used.
pub const BUDGET_WARNING: &str = "budget_warning";

/// The `error` that ends a turn the budget refused.
pub(super) fn budget_exceeded(message: String) -> RuntimeEvent {
    RuntimeEvent::Error {
        message,
        code: Some(BUDGET_EXCEEDED.to_owned()),
    }
}

impl TurnLoop<'_> {
    /// Why the owner's budget refuses the next step (the text of the turn's error, see
    /// [`budget_exceeded`]), or `None` when it may run. Warnings due are added to `pending`
    /// (sent with the step's start).
    pub(super) async fn budget_refusal(
        &mut self,
        pending: &mut Vec<RuntimeEvent>,
    ) -> Result<Option<String>, EngineError> {
        let engine = self.engine;
        let Some(OwnerBudget {
            owner,
            budget: Some(budget),
        }) = engine.store.owner_budget(self.cx.session_id).await?
        else {
            return Ok(None);
        };
        let now = engine.now();
        let spend = engine
            .store
            .spend_in(&owner, &budgets::windows(&budget, now))
            .await?;
        let verdict = budgets::judge(&budget, &spend, now);
        if let Some(exceeded) = verdict.exceeded {
            metrics::budget_refusal(exceeded.limit.as_str());
            return Ok(Some(exceeded.exceeded_message()));
        }
        for warning in verdict.warnings {
            let first = engine
                .store
                .note_budget_warning(&owner, warning.limit.as_str(), warning.window_start)
                .await?;
            if first {
                metrics::budget_warning(warning.limit.as_str());
                pending.push(RuntimeEvent::Warning {
                    message: warning.warning_message(),
                    code: BUDGET_WARNING.to_owned(),
                });
            }
        }
        Ok(None)
    }
}
