//! Changes of a session's agent: what is stored (an [`AgentSwitch`]) and announced (an
//! `agent_switched` event), from the same description.

use chrono::{DateTime, Utc};
use codelab_protocol::runtime::RuntimeEvent;

use super::{Cx, Engine, EngineError};
use crate::agents::AgentKind;
use crate::metrics;
use crate::model::{AgentSwitch, LlmUsage, StepCommit, TurnUpdate};

/// One change of agent: by the user (`explicit`), the router, or the model's `switch_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Switch {
    pub(crate) from: String,
    pub(crate) to: AgentKind,
    pub(crate) reason: String,
    pub(crate) confidence: Option<String>,
    /// How it was decided (`explicit`, `tool`, or the router's method), as stored and counted.
    pub(crate) method: &'static str,
    /// The router's verdict on the request (`atomic`, `complex`), for a routing decision.
    pub(crate) complexity: Option<&'static str>,
}

impl Switch {
    /// The record to store (in a [`StepCommit`]) for session `session_id`, made `at`.
    pub(crate) fn record(&self, session_id: &str, at: DateTime<Utc>) -> AgentSwitch {
        AgentSwitch {
            session_id: session_id.to_owned(),
            from_agent: Some(self.from.clone()),
            to_agent: self.to.as_str().to_owned(),
            reason: self.reason.clone(),
            confidence: self.confidence.clone(),
            method: self.method.to_owned(),
            created_at: at,
            complexity: self.complexity.map(str::to_owned),
        }
    }

    /// The `agent_switched` event announcing it.
    pub(crate) fn event(&self) -> RuntimeEvent {
        RuntimeEvent::AgentSwitched {
            from_agent: Some(self.from.clone()),
            to_agent: self.to.as_str().to_owned(),
            reason: self.reason.clone(),
            confidence: self.confidence.clone(),
        }
    }
}

impl Engine {
    /// Stores a change of agent, the session's new agent, its `agent_switched` event, `then`
    /// and `turn` (what routing changed in the turn) together, then sends the events.
    pub(crate) async fn record_switch(
        &self,
        cx: &Cx<'_>,
        switch: Switch,
        then: Vec<RuntimeEvent>,
        turn: Option<TurnUpdate>,
        usage: Vec<LlmUsage>,
    ) -> Result<(), EngineError> {
        let mut events = vec![switch.event()];
        events.extend(then);
        let committed = self
            .store
            .commit_step(StepCommit {
                session_id: cx.session_id.to_owned(),
                switches: vec![switch.record(cx.session_id, self.now())],
                turn,
                events,
                usage,
                ..StepCommit::default()
            })
            .await?;
        metrics::routing_decision(switch.to.as_str(), switch.method);
        cx.out.send_all(committed.events).await;
        Ok(())
    }
}
