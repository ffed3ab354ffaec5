//! Test support for the CodeLab workspace, and nothing else: helpers that start services
//! on `127.0.0.1:0` (ephemeral ports), temporary databases, and fake upstream LLM providers
//! that speak the OpenAI, Anthropic and Ollama wire formats over real HTTP. Never used by
//! production code — depend on it only from `[dev-dependencies]`, tests and benchmarks.

pub mod databases;
pub mod fake_llm;
pub mod server;

pub use databases::TempPostgres;
pub use fake_llm::{FakeFlavor, FakeLlm, FakeReply, FakeStatus, FakeToolCall, RecordedRequest};
pub use server::{ServerGuard, spawn_router, try_spawn_router};
