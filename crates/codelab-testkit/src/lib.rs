//! Test support for the CodeLab workspace, and nothing else: helpers that start services
//! on `127.0.0.1:0` (ephemeral ports), temporary databases, and fake upstream LLM providers
//! that speak the OpenAI, Anthropic and Ollama wire formats over real HTTP, and IDE clients (a
//! replica of the Flutter IDE and a protocol-2 client) for the gateway. Never used by
//! production code — depend on it only from `[dev-dependencies]`, tests and benchmarks.
#![allow(
    clippy::disallowed_methods,
    reason = "tests own their clock, ids and tasks"
)]

pub mod bench;
pub mod chat;
pub mod databases;
pub mod fake_llm;
pub mod ide_clients;
pub mod isolation;
pub mod metrics;
pub mod relay;
pub mod runtime_history;
pub mod scenarios;
pub mod server;

pub use databases::{TempDatabase, TempPostgres};
pub use fake_llm::{FakeFlavor, FakeLlm, FakeReply, FakeStatus, FakeToolCall, RecordedRequest};
pub use ide_clients::{
    Bubble, CloseInfo, ConnectError, FlutterReplicaClient, FlutterSocket, MessageModel, P2Frame,
    Protocol2Client, Protocol2Options, SocketError, ToolCallRequest, ToolDecision,
};
pub use server::{ServerGuard, spawn_router, try_spawn_router};
