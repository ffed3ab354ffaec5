//! Plans (`docs/agent-runtime.md`, "Planning"): a session's plans and one plan, read by their
//! owner. Decisions arrive as `plan_decision` frames on the stream route, like every other
//! change to a session, so they are serialised with the session's turns.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use codelab_protocol::plans::{PlanView, SessionPlans};

use super::{HttpError, Owner, owned_session};
use crate::AppState;
use crate::planning;

/// `GET /sessions/{id}/plans`: every plan of the session, oldest first, with its subtasks.
pub async fn session_plans(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(session_id): Path<String>,
) -> Result<Json<SessionPlans>, HttpError> {
    owned_session(&state, &owner, &session_id).await?;
    let plans = state.store.list_plans(&session_id).await?;
    Ok(Json(SessionPlans {
        plans: plans.iter().map(planning::view).collect(),
    }))
}

/// `GET /plans/{id}`: one plan with its versions; 404 unless the caller owns its session
/// (another user's plan is as unknown as a missing one).
pub async fn get_plan(
    State(state): State<Arc<AppState>>,
    owner: Owner,
    Path(plan_id): Path<String>,
) -> Result<Json<PlanView>, HttpError> {
    let not_found = || HttpError::not_found(format!("Plan {plan_id} not found"));
    if plan_id.is_empty() || plan_id.len() > 128 {
        return Err(not_found());
    }
    let Some(plan) = state.store.get_plan(&plan_id).await? else {
        return Err(not_found());
    };
    owned_session(&state, &owner, &plan.session_id)
        .await
        .map_err(|_| not_found())?;
    let mut view = planning::view(&plan);
    view.versions = planning::version_views(&state.store.list_plan_versions(&plan.id).await?);
    Ok(Json(view))
}
