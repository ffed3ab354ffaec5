//! The OpenAPI 3.1 description of the REST API, served at `/api/v1/openapi.json` (and
//! `/openapi.json`, as the original). Hand-built so it describes exactly the routes of
//! [`crate::rest`] and the shapes the Flutter IDE parses.

use serde_json::{Value, json};

/// The OpenAPI document for gateway `version`.
pub fn document(version: &str) -> Value {
    let mut doc = operations_and_schemas(version);
    add_listener_refusals(&mut doc);
    doc
}

/// Every route sits behind the shared listener layers (docs/architecture.md), which answer a
/// too-large body with 413 and a request that arrives too slowly with 408, in the gateway's
/// `{"detail": ...}` shape: so every operation lists both.
fn add_listener_refusals(doc: &mut Value) {
    codelab_core::http::openapi::add_to_every_operation(
        doc,
        &[
            (
                "408",
                json!({ "$ref": "#/components/responses/RequestTimeout" }),
            ),
            (
                "413",
                json!({ "$ref": "#/components/responses/PayloadTooLarge" }),
            ),
        ],
    );
}

fn operations_and_schemas(version: &str) -> Value {
    let session_id = path_param(
        "session_id",
        "A session id (a UUID handed out by POST /sessions).",
    );
    let secured = json!([{ "bearerAuth": [] }, { "internalKey": [] }]);
    let errors = |codes: &[&str]| -> Value {
        let mut map = serde_json::Map::new();
        for code in codes {
            let response = match *code {
                "401" => json!({ "$ref": "#/components/responses/Unauthorized" }),
                "403" => json!({ "$ref": "#/components/responses/InsufficientScope" }),
                "404" => json!({ "$ref": "#/components/responses/NotFound" }),
                "502" => json!({ "$ref": "#/components/responses/GatewayError" }),
                "503" => json!({ "$ref": "#/components/responses/Unavailable" }),
                "409" => json!({ "description": "The call was already decided or settled.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" },
                    "example": { "error": "conflict", "detail": "call call_1 was already decided" } } } }),
                "400" => json!({ "description": "The request body is invalid.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
                _ => json!({ "description": "Error" }),
            };
            map.insert((*code).to_owned(), response);
        }
        Value::Object(map)
    };
    let with = |ok: (&str, Value), codes: &[&str]| -> Value {
        let mut responses = errors(codes);
        if let Value::Object(map) = &mut responses {
            map.insert(ok.0.to_owned(), ok.1);
        }
        responses
    };
    let json_ok = |description: &str, schema: &str| {
        json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
    };
    let common = ["401", "403", "502", "503"];
    let with_404 = ["401", "403", "404", "502", "503"];
    let plan_id = path_param(
        "plan_id",
        "A plan id (from a plan event or GET /sessions/{session_id}/plans).",
    );
    let mut plan_decision_responses = with(
        ("200", json_ok("The decision was accepted.", "PlanAccepted")),
        &["400", "401", "403", "404", "409", "502", "503"],
    );
    plan_decision_responses["409"] = json!({ "description": "The plan does not wait for this decision.",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" },
        "example": { "error": "conflict", "detail": "plan p1 is in_progress: it does not wait for a decision (approve refused)" } } } });

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CodeLab Gateway",
            "version": version,
            "description": "REST API of the CodeLab gateway (the IDE's WebSocket is at /api/v1/ws/{session_id}). \
                Authenticate with `Authorization: Bearer <access token>` from the auth service's \
                /oauth/token. Reading needs the api:read scope, acting (creating, renaming, deleting, \
                deciding, cancelling) api:write. Service callers inside the deployment may send \
                X-Internal-Auth with the gateway's service key (and X-Codelab-User-Id). \
                Another user's session answers 404, like a missing one. Errors from the agent \
                runtime keep their status with {\"error\": \"Agent Runtime error: <status>\", \"detail\": ...}."
        },
        "servers": [{ "url": "/" }],
        "security": secured,
        "paths": {
            "/health": { "get": health_operation("getHealth") },
            "/api/v1/health": { "get": health_operation("getApiHealth") },
            "/api/v1/sessions": {
                "get": {
                    "operationId": "listSessions",
                    "summary": "The caller's sessions, most recently active first",
                    "parameters": [
                        bounded_query_param("limit", 1, 1000, "Page size, 1 to 1000 (default 100)."),
                        bounded_query_param("offset", 0, u64::from(u32::MAX), "Sessions to skip (default 0)."),
                        query_param("search", "string", "Case-insensitive substring of the title.")
                    ],
                    "responses": with(("200", json_ok("A page of sessions.", "SessionList")), &["400", "401", "403", "502", "503"])
                },
                "post": {
                    "operationId": "createSession",
                    "summary": "Creates a session (any request body is ignored); 200 as the original gateway answered",
                    "responses": with(("200", json_ok("The new session.", "Session")), &common)
                }
            },
            "/api/v1/sessions/{session_id}": {
                "parameters": [session_id],
                "get": {
                    "operationId": "getSession",
                    "summary": "One session, as a flat object",
                    "responses": with(("200", json_ok("The session.", "Session")), &with_404)
                },
                "patch": {
                    "operationId": "updateSession",
                    "summary": "Renames a session",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/SessionUpdate" } } } },
                    "responses": with(("200", json_ok("The renamed session.", "Session")), &["400", "401", "403", "404", "502", "503"])
                },
                "delete": {
                    "operationId": "deleteSession",
                    "summary": "Deletes a session and everything in it",
                    "responses": with(("204", json!({ "description": "Deleted." })), &with_404)
                }
            },
            "/api/v1/sessions/{session_id}/history": {
                "parameters": [session_id],
                "get": {
                    "operationId": "getSessionHistory",
                    "summary": "Messages, agent changes and tool calls of a session",
                    "responses": with(("200", json_ok("The history.", "History")), &with_404)
                }
            },
            "/api/v1/sessions/{session_id}/pending-approvals": {
                "parameters": [session_id],
                "get": {
                    "operationId": "listPendingApprovals",
                    "summary": "Tool calls waiting for a person's decision, oldest first",
                    "responses": with(("200", json_ok("The pending approvals.", "PendingApprovals")), &with_404)
                }
            },
            "/api/v1/sessions/{session_id}/approvals/{call_id}": {
                "parameters": [session_id, path_param("call_id", "The call_id of the pending tool call.")],
                "post": {
                    "operationId": "decideApproval",
                    "summary": "Approves, edits or rejects a pending tool call",
                    "description": "The runtime's events for the decision (for approve/edit: the tool_call again, without requires_approval) are delivered to the session's WebSocket.",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/ApprovalDecision" },
                        "example": { "decision": "edit", "modified_arguments": { "path": "notes/todo.md" } } } } },
                    "responses": with(("200", json_ok("The decision was accepted.", "ApprovalAccepted")),
                        &["400", "401", "403", "404", "409", "502", "503"])
                }
            },
            "/api/v1/sessions/{session_id}/cancel": {
                "parameters": [session_id],
                "post": {
                    "operationId": "cancelTurn",
                    "summary": "Cancels the session's running turn and its open tool calls",
                    "responses": with(("200", json_ok("Cancelled (or nothing was running).", "Cancelled")), &with_404)
                }
            },
            "/api/v1/sessions/{session_id}/plans": {
                "parameters": [session_id],
                "get": {
                    "operationId": "listSessionPlans",
                    "summary": "The plans of a session, oldest first",
                    "responses": with(("200", json_ok("The plans.", "PlanList")), &with_404)
                }
            },
            "/api/v1/sessions/{session_id}/usage": {
                "parameters": [session_id],
                "get": {
                    "operationId": "getSessionUsage",
                    "summary": "The session's LLM calls per turn and step: tokens, cost, latency (docs/usage.md)",
                    "responses": with(("200", json_ok("The usage.", "SessionUsage")), &with_404)
                }
            },
            "/api/v1/events/metrics/session/{session_id}": {
                "parameters": [session_id],
                "get": {
                    "operationId": "getSessionMetrics",
                    "summary": "The original's per-session LLM metrics, from the usage records (404 when the session made no call)",
                    "responses": with(("200", json_ok("The metrics.", "SessionMetrics")), &with_404)
                }
            },
            "/api/v1/usage": {
                "get": {
                    "operationId": "getMyUsage",
                    "summary": "The caller's LLM calls in a range: totals, per day, model and agent, top sessions (docs/usage.md)",
                    "parameters": [range_param("from", "Start (inclusive): RFC 3339 or YYYY-MM-DD; default the start of this UTC month."),
                        range_param("to", "End (exclusive): RFC 3339 or YYYY-MM-DD; default now. At most 400 days after from.")],
                    "responses": with(("200", json_ok("The usage.", "MyUsage")), &["400", "401", "403", "502", "503"])
                }
            },
            "/api/v1/admin/budgets": {
                "get": {
                    "operationId": "listBudgets",
                    "summary": "Every budget, the default (subject *) first. Needs api:admin",
                    "responses": with(("200", json_ok("The budgets.", "BudgetList")), &common)
                }
            },
            "/api/v1/admin/budgets/{subject}": {
                "parameters": [{ "name": "subject", "in": "path", "required": true,
                    "description": "A user id (the tokens' sub), or `default` for everyone without their own.",
                    "schema": codelab_protocol::usage::subject_schema() }],
                "put": {
                    "operationId": "setBudget",
                    "summary": "Sets a budget, replacing the previous one (docs/usage.md). Needs api:admin",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/BudgetLimits" } } } },
                    "responses": with(("200", json_ok("The budget.", "Budget")), &["400", "401", "403", "502", "503"])
                },
                "delete": {
                    "operationId": "clearBudget",
                    "summary": "Removes a budget. Needs api:admin",
                    "responses": with(("204", json!({ "description": "Removed." })), &["400", "401", "403", "404", "502", "503"])
                }
            },
            "/api/v1/admin/usage": {
                "get": {
                    "operationId": "getUsageReport",
                    "summary": "Everyone's LLM calls (or one user's) grouped by up to two of user, model, agent, day; JSON or CSV. Needs api:admin",
                    "parameters": [
                        { "name": "group_by", "in": "query", "required": false, "description": "Comma-separated, default user.",
                          "schema": { "type": "string", "pattern": "^(user|model|agent|day)(,(user|model|agent|day))?$" } },
                        range_param("from", "Start (inclusive): RFC 3339 or YYYY-MM-DD; default the start of this UTC month."),
                        range_param("to", "End (exclusive): RFC 3339 or YYYY-MM-DD; default now. At most 400 days after from."),
                        { "name": "user", "in": "query", "required": false, "description": "Only this user's calls (their id).",
                          "schema": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.@:|-]+$" } },
                        { "name": "format", "in": "query", "required": false, "description": "json (default) or csv.",
                          "schema": { "enum": ["json", "csv"] } }],
                    "responses": with(("200", json!({ "description": "The report.", "content": {
                        "application/json": { "schema": { "$ref": "#/components/schemas/UsageReport" } },
                        "text/csv": { "schema": { "type": "string" } } } })), &["400", "401", "403", "502", "503"])
                }
            },
            "/api/v1/plans/{plan_id}": {
                "parameters": [plan_id],
                "get": {
                    "operationId": "getPlan",
                    "summary": "One plan with its subtasks (another user's plan answers 404)",
                    "responses": with(("200", json_ok("The plan.", "Plan")), &with_404)
                }
            },
            "/api/v1/plans/{plan_id}/decision": {
                "parameters": [plan_id],
                "post": {
                    "operationId": "decidePlan",
                    "summary": "Approves, rejects or modifies a plan that waits for approval; retries, skips or cancels one stopped at a failed subtask",
                    "description": "The runtime's events for the decision (for approve: the plan's progress as its subtasks run) are delivered to the session's WebSocket. approved, rejected, modified and cancelled are read as approve, reject, modify and cancel.",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/PlanDecision" },
                        "example": { "decision": "modify", "feedback": "Write the tests first." } } } },
                    "responses": plan_decision_responses
                }
            },
            "/api/v1/agents": {
                "get": {
                    "operationId": "listAgents",
                    "summary": "The agents of this deployment",
                    "responses": with(("200", json_ok("The agents.", "AgentList")), &common)
                }
            },
            "/api/v1/agents/{agent_id}": {
                "parameters": [path_param("agent_id", "The agent's type, e.g. coder.")],
                "get": {
                    "operationId": "getAgent",
                    "summary": "One agent",
                    "responses": with(("200", json_ok("The agent.", "Agent")), &with_404)
                }
            },
            "/api/v1/agents/{session_id}/current": {
                "parameters": [session_id],
                "get": {
                    "operationId": "getCurrentAgent",
                    "summary": "A session's agent and how it got there",
                    "responses": with(("200", json_ok("The agent context.", "AgentContext")), &with_404)
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "security": [],
                    "responses": { "200": { "description": "OpenAPI 3.1 JSON." } }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "An access token of the auth service (RS256, type access)." },
                "internalKey": { "type": "apiKey", "in": "header", "name": "X-Internal-Auth",
                    "description": "Service callers with GATEWAY__SERVICE_API_KEY (none when it is \
                        empty); X-Codelab-User-Id names the user they act for." }
            },
            "responses": {
                "Unauthorized": {
                    "description": "No or invalid credentials (RFC 6750; see WWW-Authenticate).",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AuthError" },
                        "example": { "error": "invalid_token", "error_description": "the access token has expired" } } }
                },
                "InsufficientScope": {
                    "description": "The token lacks the scope the call needs (RFC 6750 §3.1).",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AuthError" },
                        "example": { "error": "insufficient_scope", "error_description": "this call needs the api:write scope" } } }
                },
                "NotFound": {
                    "description": "Unknown (or another user's) session, agent, call or plan.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                },
                "GatewayError": {
                    "description": "The agent runtime cannot be reached.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" },
                        "example": { "error": "Gateway error", "detail": "connection refused" } } }
                },
                "Unavailable": {
                    "description": "The runtime is unavailable, or token keys cannot be fetched.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                },
                "PayloadTooLarge": {
                    "description": "The body is larger than GATEWAY__MAX_BODY_BYTES.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Detail" },
                        "example": { "detail": "request body larger than 1048576 bytes" } } }
                },
                "RequestTimeout": {
                    "description": "The request body did not arrive in time.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Detail" } } }
                }
            },
            "schemas": schemas()
        }
    })
}

fn health_operation(id: &str) -> Value {
    json!({
        "operationId": id,
        "summary": "Liveness",
        "security": [],
        "responses": { "200": { "description": "Alive.", "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Health" },
            "example": { "status": "healthy", "service": "gateway", "version": "0.1.0" } } } } }
    })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
        "schema": { "type": "string" } })
}

/// An integer query parameter the runtime accepts from `minimum` to `maximum` (else 400).
fn bounded_query_param(name: &str, minimum: u64, maximum: u64, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
        "schema": { "type": "integer", "minimum": minimum, "maximum": maximum } })
}

/// A `from`/`to` query parameter of a usage report.
fn range_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
        "schema": codelab_protocol::usage::range_schema() })
}

fn query_param(name: &str, kind: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
        "schema": { "type": kind } })
}

fn schemas() -> Value {
    let time = json!({ "type": "string", "format": "date-time" });
    // Apart: inline, the one `json!` below would pass the macro's recursion limit.
    let plan_version = json!({ "type": "object",
        "required": ["version", "title", "description", "subtasks", "created_at"],
        "properties": { "version": { "type": "integer", "minimum": 1 },
            "title": { "type": "string" }, "description": { "type": "string" },
            "subtasks": { "type": "array" }, "feedback": { "type": "string" },
            "created_at": time } });
    let nullable_string = json!({ "type": ["string", "null"] });
    let mut schemas = json!({
        "Health": { "type": "object", "required": ["status", "service", "version"], "properties": {
            "status": { "type": "string", "const": "healthy" },
            "service": { "type": "string" }, "version": { "type": "string" } } },
        "Error": { "type": "object", "required": ["error"], "properties": {
            "error": { "type": "string" }, "detail": {} } },
        "SessionMetrics": { "type": "object",
            "required": ["session_id", "total_requests", "successful_requests", "failed_requests",
                "total_duration_ms", "average_duration_ms", "total_prompt_tokens",
                "total_completion_tokens", "total_tokens", "average_tokens_per_request",
                "requests_with_tools", "requests"],
            "properties": { "session_id": { "type": "string" },
                "total_requests": { "type": "integer", "minimum": 1 },
                "requests": { "type": "array", "items": { "type": "object",
                    "required": ["timestamp", "model", "duration_ms", "prompt_tokens",
                        "completion_tokens", "total_tokens", "has_tool_calls", "success", "error"] } } } },
        "Detail": { "type": "object", "required": ["detail"], "additionalProperties": false,
            "properties": { "detail": { "type": "string" } } },
        "AuthError": { "type": "object", "required": ["error", "error_description"], "properties": {
            "error": { "type": "string", "enum": ["invalid_token", "unauthorized", "invalid_request", "insufficient_scope", "temporarily_unavailable"] },
            "error_description": { "type": "string" } } },
        "Session": { "type": "object", "required": ["id", "message_count"], "properties": {
            "id": { "type": "string" }, "title": nullable_string,
            "message_count": { "type": "integer" }, "created_at": time,
            "last_activity": time, "is_active": { "type": "boolean" },
            "current_agent": { "type": "string" },
            "planning": { "enum": ["auto", "always", "never"] } } },
        "SessionList": { "type": "object", "required": ["sessions", "total", "limit", "offset"], "properties": {
            "sessions": { "type": "array", "items": { "$ref": "#/components/schemas/Session" } },
            "total": { "type": "integer" }, "limit": { "type": "integer" }, "offset": { "type": "integer" } } },
        "SessionUpdate": { "type": "object", "properties": {
            "title": { "type": "string", "minLength": 1, "maxLength": 500 },
            "planning": { "enum": ["auto", "always", "never"] } },
            "anyOf": [{ "required": ["title"] }, { "required": ["planning"] }] },
        "History": { "type": "object", "required": ["session_id", "messages", "message_count"], "properties": {
            "session_id": { "type": "string" },
            "messages": { "type": "array", "items": { "type": "object", "required": ["role"], "properties": {
                "role": { "type": "string" }, "content": { "type": "string" }, "name": { "type": "string" },
                "tool_call_id": { "type": "string" },
                "tool_calls": { "type": "array", "items": { "type": "object" } } } } },
            "message_count": { "type": "integer" }, "last_activity": time,
            "current_agent": { "type": "string" },
            "agent_history": { "type": "array", "items": { "type": "object" } },
            "tool_calls": { "type": "array", "items": { "type": "object", "properties": {
                "call_id": { "type": "string" }, "tool_name": { "type": "string" },
                "arguments": {}, "status": { "type": "string" },
                "requires_approval": { "type": "boolean" }, "decision": nullable_string,
                "result": {}, "error": nullable_string } } } } },
        "PendingApprovals": { "type": "object", "required": ["session_id", "count", "pending_approvals"], "properties": {
            "session_id": { "type": "string" }, "count": { "type": "integer" },
            "pending_approvals": { "type": "array", "items": { "type": "object",
                "required": ["call_id", "tool_name", "arguments", "created_at"], "properties": {
                "call_id": { "type": "string" }, "tool_name": { "type": "string" },
                "arguments": { "type": "object" }, "created_at": time, "reason": nullable_string,
                "request_id": { "type": "string" }, "request_type": { "type": "string" },
                "subject": { "type": "string" }, "details": { "type": "object" } } } } } },
        // An edit without modified_arguments is refused with 400, so the schema says so.
        "ApprovalDecision": { "type": "object", "required": ["decision"], "properties": {
            "decision": { "type": "string", "enum": ["approve", "edit", "reject"] },
            "modified_arguments": { "type": ["object", "null"], "description": "Required for edit." },
            "feedback": { "type": ["string", "null"], "description": "Passed to the model with a rejection." } },
            "anyOf": [
                { "properties": { "decision": { "enum": ["approve", "reject"] } } },
                { "required": ["modified_arguments"], "properties": { "modified_arguments": { "type": "object" } } }
            ] },
        "ApprovalAccepted": { "type": "object", "required": ["call_id", "decision", "status"], "properties": {
            "call_id": { "type": "string" }, "decision": { "type": "string" },
            "status": { "type": "string", "const": "accepted" } } },
        "Subtask": { "type": "object",
            "required": ["id", "title", "description", "agent", "estimated_time_minutes", "dependencies", "status"],
            "properties": {
                "id": { "type": "integer", "minimum": 0, "description": "Its 0-based position in the plan." },
                "title": { "type": "string" }, "description": { "type": "string" },
                "agent": { "type": "string" }, "estimated_time_minutes": { "type": "integer", "minimum": 0 },
                "dependencies": { "type": "array", "items": { "type": "integer", "minimum": 0 } },
                "status": { "type": "string", "enum": ["pending", "in_progress", "completed", "failed", "skipped", "cancelled"] },
                "result": { "type": "string" }, "error": { "type": "string" } } },
        "Plan": { "type": "object",
            "required": ["id", "session_id", "version", "title", "description", "status", "approval_request_id", "created_at", "updated_at", "subtasks"],
            "properties": {
                "id": { "type": "string" }, "session_id": { "type": "string" },
                "version": { "type": "integer", "minimum": 1 },
                "title": { "type": "string" }, "description": { "type": "string" },
                "status": { "type": "string", "enum": ["awaiting_approval", "approved", "in_progress", "completed", "rejected", "failed", "cancelled"] },
                "approval_request_id": { "type": "string" },
                "created_at": time, "updated_at": time,
                "feedback": { "type": "string" }, "summary": { "type": "string" },
                "subtasks": { "type": "array", "items": { "$ref": "#/components/schemas/Subtask" } },
                "versions": { "type": "array", "items": plan_version } } },
        "PlanList": { "type": "object", "required": ["plans"], "properties": {
            "plans": { "type": "array", "items": { "$ref": "#/components/schemas/Plan" } } } },
        // A modify without feedback (or with blank feedback) is refused with 400, so the
        // schema says so.
        "PlanDecision": { "type": "object", "required": ["decision"], "properties": {
            "decision": { "type": "string", "enum": ["approve", "approved", "reject", "rejected", "modify", "modified", "retry", "skip", "cancel", "cancelled"] },
            "feedback": { "type": ["string", "null"], "description": "Required for modify: what should change." } },
            "anyOf": [
                { "properties": { "decision": { "enum": ["approve", "approved", "reject", "rejected", "retry", "skip", "cancel", "cancelled"] } } },
                { "required": ["feedback"], "properties": { "feedback": { "type": "string", "pattern": "\\S" } } }
            ] },
        "PlanAccepted": { "type": "object", "required": ["plan_id", "decision", "status"], "properties": {
            "plan_id": { "type": "string" },
            "decision": { "type": "string", "enum": ["approve", "reject", "modify", "retry", "skip", "cancel"] },
            "status": { "type": "string", "const": "accepted" } } },
        "Cancelled": { "type": "object", "required": ["status"], "properties": {
            "status": { "type": "string", "const": "cancelled" },
            "cancelled_calls": { "type": "integer" } } },
        "Agent": { "type": "object", "required": ["type", "name"], "properties": {
            "type": { "type": "string" }, "name": { "type": "string" },
            "description": { "type": "string" },
            "allowed_tools": { "type": "array", "items": { "type": "string" } },
            "has_file_restrictions": { "type": "boolean" } } },
        "AgentList": { "type": "object", "required": ["agents", "total"], "properties": {
            "agents": { "type": "array", "items": { "$ref": "#/components/schemas/Agent" } },
            "total": { "type": "integer" } } },
        "AgentContext": { "type": "object", "required": ["context"], "properties": {
            "context": { "type": "object", "properties": {
                "session_id": { "type": "string" }, "current_agent": { "type": "string" },
                "switch_count": { "type": "integer" },
                "switch_history": { "type": "array", "items": { "type": "object" } },
                "last_switch_at": { "type": ["string", "null"], "format": "date-time" },
                "created_at": time } } } }
    });
    if let (Value::Object(all), Value::Object(usage)) =
        (&mut schemas, codelab_protocol::usage::openapi_schemas())
    {
        all.extend(usage);
    }
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document("1.2.3");
        let text = doc.to_string();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"$ref\":\"#/") {
            let tail = &rest[at + 8..];
            let end = tail.find('"').unwrap();
            let pointer = &tail[1..end];
            assert!(doc.pointer(pointer).is_some(), "dangling {pointer}");
            rest = &tail[end..];
        }
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], "1.2.3");
    }

    /// schemathesis found both (crates/codelab/tests/schema): `limit=0` and an edit without
    /// modified_arguments were valid by the description and refused with 400.
    #[test]
    fn the_description_bounds_what_the_code_refuses() {
        let doc = document("1.2.3");
        let params = doc["paths"]["/api/v1/sessions"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["minimum"], 1);
        assert_eq!(limit["schema"]["maximum"], 1000);
        let offset = params.iter().find(|p| p["name"] == "offset").unwrap();
        assert_eq!(offset["schema"]["minimum"], 0);
        let decision = &doc["components"]["schemas"]["ApprovalDecision"];
        let edit_branch = decision["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|branch| branch.get("required").is_some())
            .unwrap();
        assert_eq!(edit_branch["required"][0], "modified_arguments");
        let decision = &doc["components"]["schemas"]["PlanDecision"];
        let modify_branch = decision["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|branch| branch.get("required").is_some())
            .unwrap();
        assert_eq!(modify_branch["required"][0], "feedback");
        assert_eq!(modify_branch["properties"]["feedback"]["pattern"], "\\S");
    }

    /// The plan routes list every status their handlers answer (`rest::plans`).
    #[test]
    fn the_plan_routes_list_their_answers() {
        let doc = document("1.2.3");
        let statuses = |path: &str, method: &str| -> Vec<String> {
            let mut codes: Vec<String> = doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} is not described"))
                .keys()
                .cloned()
                .collect();
            codes.sort();
            codes
        };
        let read = ["200", "401", "403", "404", "408", "413", "502", "503"];
        assert_eq!(statuses("/api/v1/sessions/{session_id}/plans", "get"), read);
        assert_eq!(statuses("/api/v1/plans/{plan_id}", "get"), read);
        assert_eq!(
            statuses("/api/v1/plans/{plan_id}/decision", "post"),
            [
                "200", "400", "401", "403", "404", "408", "409", "413", "502", "503"
            ]
        );
    }

    #[test]
    fn every_operation_lists_the_listener_refusals() {
        let doc = document("1.2.3");
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                operations += 1;
                for status in ["408", "413"] {
                    assert!(
                        operation["responses"].get(status).is_some(),
                        "{method} {path} does not list {status}"
                    );
                }
            }
        }
        assert!(operations >= 14, "{operations}");
    }
}
