//! Settings of the agent runtime: the original's `AGENT_RUNTIME__*` names and defaults, plus the
//! limits and files our turn loop needs.

use std::path::PathBuf;
use std::time::Duration;

use codelab_core::config::{Environment, Secret};
use codelab_core::service::{ConfigProblem, ServiceConfig};

use crate::store::{DEFAULT_SESSION_LOCK_STATEMENT_TIMEOUT, StoreSettings};

codelab_core::service_config! {
    /// `[agent_runtime]` / `AGENT_RUNTIME__*`.
    pub struct Config {
        /// Guards the runtime's API (`X-Internal-Auth` from the gateway).
        pub internal_api_key: Secret = Secret::new("change-me-internal-key"),
        /// Base URL of the LLM proxy.
        pub llm_proxy_url: String = "http://localhost:8002".to_owned(),
        /// Sent to the proxy as `X-Internal-Auth` (the proxy's `LLM_PROXY__INTERNAL_API_KEY`).
        /// Empty means the same value as `internal_api_key`, as the original did.
        pub llm_proxy_api_key: Secret = Secret::default(),
        /// Model of every agent unless `agent_models` names one.
        pub llm_model: String = "mock-llm".to_owned(),
        /// Per-agent models, e.g. `architect=claude-sonnet,coder=gpt-4.1`.
        pub agent_models: String = String::new(),
        /// `false`: one `universal` agent does everything.
        pub multi_agent_mode: bool = true,
        /// A folder of `<agent>.md.j2` templates overriding the built-in system prompts.
        pub prompts_dir: Option<PathBuf> = None,
        /// A YAML or JSON file of HITL rules replacing the built-in table.
        pub hitl_policy_file: Option<PathBuf> = None,
        /// Seconds allowed for the routing classification call.
        pub routing_timeout: f64 = 5.0,
        /// Seconds allowed for one LLM step (until the stream starts and between pieces).
        pub llm_timeout: f64 = 120.0,
        /// Longest line (or SSE event) accepted from the LLM proxy's stream; past it the turn
        /// fails, so a broken proxy cannot make the runtime buffer without bound.
        pub max_stream_line_bytes: usize = crate::llm::DEFAULT_MAX_STREAM_LINE_BYTES,
        pub max_steps_per_turn: u32 = 25,
        pub max_tool_calls_per_step: u32 = 10,
        /// Most subtasks a plan may have (`create_plan` refuses more).
        pub max_plan_subtasks: u32 = 20,
        /// `true`: a plan runs without waiting for a person's approval (trusted deployments).
        pub plan_auto_approve: bool = false,
        /// Token budget of the context sent to the model (0: no trimming).
        pub context_tokens: u64 = 0,
        pub session_retention_days: u32 = 30,
        /// Seconds between sweeps for turns whose runner died (also one at start); 0 turns the
        /// sweep off, and such a turn is resumed by the next frame of its session only.
        pub recovery_interval: f64 = 60.0,
        /// `sqlite:///data/agent_runtime.db` or `postgres://...`.
        pub db_url: String = "sqlite:///data/agent_runtime.db".to_owned(),
        pub db_max_connections: u32 = 10,
        /// Seconds a statement of the PostgreSQL session lock connection may go unanswered
        /// before that connection counts as lost (its locks released) and the lock fails.
        pub session_lock_statement_timeout: f64 = 5.0,
        pub max_body_bytes: usize = 32 * 1024 * 1024,
    }
}

impl ServiceConfig for Config {
    const SECTION: &'static str = "agent_runtime";
    const ENV_PREFIX: &'static str = "AGENT_RUNTIME";
    const DEFAULT_PORT: u16 = 8001;

    /// Checks the settings the rest of `build` does not: limits and, outside development,
    /// keys that are not the published defaults. The error names the setting.
    fn validate(&self, environment: Environment) -> Result<(), ConfigProblem> {
        self.settings_problem(environment).map_err(ConfigProblem)
    }
}

impl Config {
    /// What the store takes from these settings (defaults where one is invalid; `validate`
    /// refuses those before the service starts).
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            session_lock_statement_timeout: self
                .session_lock_statement()
                .unwrap_or(DEFAULT_SESSION_LOCK_STATEMENT_TIMEOUT),
        }
    }

    /// `session_lock_statement_timeout` as a duration, `None` unless positive and finite.
    fn session_lock_statement(&self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.session_lock_statement_timeout)
            .ok()
            .filter(|bound| !bound.is_zero())
    }

    fn settings_problem(&self, environment: Environment) -> Result<(), String> {
        if !(self.routing_timeout.is_finite() && self.routing_timeout > 0.0) {
            return Err(format!(
                "AGENT_RUNTIME__ROUTING_TIMEOUT must be a positive number of seconds, got {}",
                self.routing_timeout
            ));
        }
        if !(self.recovery_interval.is_finite() && self.recovery_interval >= 0.0) {
            return Err(format!(
                "AGENT_RUNTIME__RECOVERY_INTERVAL must be a number of seconds (0 turns the \
                 sweep off), got {}",
                self.recovery_interval
            ));
        }
        if self.session_lock_statement().is_none() {
            return Err(format!(
                "AGENT_RUNTIME__SESSION_LOCK_STATEMENT_TIMEOUT must be a positive number of \
                 seconds, got {}",
                self.session_lock_statement_timeout
            ));
        }
        if self.max_steps_per_turn == 0 {
            return Err("AGENT_RUNTIME__MAX_STEPS_PER_TURN must be at least 1".to_owned());
        }
        if self.max_stream_line_bytes < crate::llm::MIN_STREAM_LINE_BYTES {
            return Err(format!(
                "AGENT_RUNTIME__MAX_STREAM_LINE_BYTES must be at least {}, got {}",
                crate::llm::MIN_STREAM_LINE_BYTES,
                self.max_stream_line_bytes
            ));
        }
        if self.max_tool_calls_per_step == 0 {
            return Err("AGENT_RUNTIME__MAX_TOOL_CALLS_PER_STEP must be at least 1".to_owned());
        }
        if !(1..=crate::planning::MAX_PLAN_SUBTASKS_CAP).contains(&self.max_plan_subtasks) {
            return Err(format!(
                "AGENT_RUNTIME__MAX_PLAN_SUBTASKS must be between 1 and {}, got {}",
                crate::planning::MAX_PLAN_SUBTASKS_CAP,
                self.max_plan_subtasks
            ));
        }
        if environment.is_hardened() {
            if self.internal_api_key.is_weak() {
                return Err(format!(
                    "AGENT_RUNTIME__INTERNAL_API_KEY is missing, too short or a published \
                     default; set a long random key ({} refuses weak keys)",
                    environment.as_str()
                ));
            }
            if !self.llm_proxy_api_key.is_empty() && self.llm_proxy_api_key.is_weak() {
                return Err(format!(
                    "AGENT_RUNTIME__LLM_PROXY_API_KEY is too short or a published default ({} \
                     refuses weak keys)",
                    environment.as_str()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_the_default_key() {
        let config = Config::default();
        assert!(config.validate(Environment::Development).is_ok());
        let err = config.validate(Environment::Production).unwrap_err();
        assert!(err.starts_with("AGENT_RUNTIME__INTERNAL_API_KEY"), "{err}");
        let strong = Config {
            internal_api_key: Secret::generate(),
            ..Config::default()
        };
        assert!(strong.validate(Environment::Production).is_ok());
    }

    #[test]
    fn limits_must_be_usable() {
        let zero_steps = Config {
            max_steps_per_turn: 0,
            ..Config::default()
        };
        assert!(zero_steps.validate(Environment::Development).is_err());
        let bad_timeout = Config {
            routing_timeout: f64::NAN,
            ..Config::default()
        };
        assert!(bad_timeout.validate(Environment::Development).is_err());
    }

    #[test]
    fn the_session_lock_statement_timeout_must_be_a_positive_number_of_seconds() {
        for bad in [0.0, -1.0, 1e-12, f64::NAN, f64::INFINITY, 1e30] {
            let config = Config {
                session_lock_statement_timeout: bad,
                ..Config::default()
            };
            let err = config.validate(Environment::Development).unwrap_err();
            assert!(
                err.starts_with("AGENT_RUNTIME__SESSION_LOCK_STATEMENT_TIMEOUT"),
                "{bad}: {err}"
            );
        }
        let default = Config::default();
        assert_eq!(
            default.store_settings().session_lock_statement_timeout,
            Duration::from_secs(5)
        );
        let short = Config {
            session_lock_statement_timeout: 0.25,
            ..Config::default()
        };
        assert!(short.validate(Environment::Development).is_ok());
        assert_eq!(
            short.store_settings().session_lock_statement_timeout,
            Duration::from_millis(250)
        );
    }
}
