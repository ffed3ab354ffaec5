//! The frames that start work on a session: `user_message` (a new turn) and `switch_agent`
//! (a change of agent without an LLM call).

use codelab_protocol::runtime::{RuntimeEvent, TurnOutcome};

use super::settle::OpenWork;
use super::switch::Switch;
use super::turn::{FrameStart, TurnLoop};
use super::{Cx, Engine, EngineError, settled_event};
use crate::agents::AgentKind;
use crate::metrics;
use crate::model::{NewMessage, PlanningMode, Role, Session, StepCommit, Turn, TurnStatus};

/// Longest stored title (the original's column size).
pub const MAX_TITLE_CHARS: usize = 500;

/// A session title from its first user message: trimmed, at most 500 characters.
pub fn title_of(content: &str) -> String {
    content.trim().chars().take(MAX_TITLE_CHARS).collect()
}

impl Engine {
    /// A user message: open calls of an earlier turn are cancelled, the message and the turn
    /// answering it are stored together, then the turn runs. `known`: the session's state
    /// when already read under the lock.
    pub(crate) async fn user_message(
        &self,
        cx: &Cx<'_>,
        content: String,
        agent: Option<AgentKind>,
        known: Option<FrameStart>,
    ) -> Result<(), EngineError> {
        let (session, open) = match known {
            Some(FrameStart {
                session,
                active,
                open_calls,
            }) => (
                Some(session),
                Some(OpenWork {
                    active: active.map(|active| active.turn),
                    calls: open_calls,
                }),
            ),
            None => (None, None),
        };
        // Calls still open from an earlier turn are answered first, so the stored history
        // keeps every assistant tool call directly followed by its results (providers reject
        // anything else).
        let cancelled = self
            .cancel_open_work(cx, "Cancelled: the user sent a new message", open)
            .await?;
        // Settling calls changes neither the agent nor the title, which are all used here.
        let session = match session {
            Some(session) => session,
            None => self.session(cx).await?,
        };
        let now = self.now();
        // Created at step 1, running: the first step starts with the turn (one commit less).
        let mut turn = Turn {
            id: codelab_core::new_id().to_string(),
            session_id: cx.session_id.to_owned(),
            status: TurnStatus::Running,
            steps: 1,
            agent: session.current_agent.clone(),
            created_at: now,
            updated_at: now,
            cancel_requested_at: None,
            plan_id: None,
            plan_required: false,
        };
        let explicit = agent
            .filter(|a| a.as_str() != session.current_agent)
            .map(|agent| Switch {
                from: session.current_agent.clone(),
                to: agent,
                reason: "User requested".to_owned(),
                confidence: Some("high".to_owned()),
                method: "explicit",
                complexity: None,
            });
        let mut switches = Vec::new();
        if let Some(switch) = &explicit {
            switches.push(switch.record(cx.session_id, now));
            turn.agent = switch.to.as_str().to_owned();
        }
        // A plan asked for in so many words, of the architect chosen by the user (routing
        // decides it otherwise, see `TurnLoop::specialist`).
        turn.plan_required = turn.agent == AgentKind::Architect.as_str()
            && session.planning != PlanningMode::Never
            && crate::routing::asks_for_plan(&content);
        let session_agent = explicit.as_ref().map_or_else(
            || session.current_agent.clone(),
            |s| s.to.as_str().to_owned(),
        );
        let mut events = vec![RuntimeEvent::SessionInfo {
            session_id: cx.session_id.to_owned(),
            current_agent: session.current_agent.clone(),
        }];
        events.extend(cancelled.iter().map(|call| settled_event(call, None)));
        if let Some(switch) = &explicit {
            events.push(switch.event());
        }
        // The message, the turn that answers it and their events are stored together: after
        // a crash a message is never left without its turn.
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                new_turn: Some(turn.clone()),
                title: session.title.is_none().then(|| title_of(&content)),
                messages: vec![NewMessage::text(cx.session_id, Role::User, &content)],
                switches,
                events,
                ..StepCommit::default()
            })
            .await?;
        if let Some(switch) = &explicit {
            metrics::routing_decision(switch.to.as_str(), switch.method);
        }
        cx.out.send_all(committed.events).await;
        TurnLoop::new(self, *cx, &mut turn)
            .with_session_agent(session_agent)
            .run(true, Vec::new())
            .await
    }

    /// A change of agent the user asked for, recorded and announced; no LLM call. `known`:
    /// the session as already read under the lock.
    pub(crate) async fn switch_agent(
        &self,
        cx: &Cx<'_>,
        agent: AgentKind,
        reason: Option<String>,
        known: Option<Session>,
    ) -> Result<(), EngineError> {
        let session = match known {
            Some(session) => session,
            None => self.session(cx).await?,
        };
        if session.current_agent == agent.as_str() && !self.confirms_exemptions(cx, agent).await? {
            cx.out
                .emit(RuntimeEvent::Notice {
                    message: format!("the session is already with the {agent} agent"),
                })
                .await?;
            return Ok(());
        }
        let switch = Switch {
            from: session.current_agent,
            to: agent,
            reason: reason.unwrap_or_else(|| "User requested agent switch".to_owned()),
            confidence: Some("high".to_owned()),
            method: "explicit",
            complexity: None,
        };
        self.record_switch(
            cx,
            switch,
            vec![RuntimeEvent::TurnFinished {
                outcome: TurnOutcome::Completed,
            }],
            None,
            Vec::new(),
        )
        .await
    }

    /// Whether a `switch_agent` to the session's own agent is the user's choice of an agent
    /// the model switched to: its HITL exemptions apply from then on, so it is recorded.
    async fn confirms_exemptions(
        &self,
        cx: &Cx<'_>,
        agent: AgentKind,
    ) -> Result<bool, EngineError> {
        if self.hitl.exemptions(agent).is_empty() {
            return Ok(false);
        }
        let switches = self.store.list_switches(cx.session_id).await?;
        Ok(!crate::hitl::agents_chosen_by_user(&switches).contains(&agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_capped() {
        assert_eq!(title_of("  hello \n"), "hello");
        let long = "é".repeat(600);
        assert_eq!(title_of(&long).chars().count(), 500);
    }
}
