// The console's live chat: protocol 2 over the gateway's WebSocket, with token streaming.
// The access token comes from POST /console/token (same origin, CSRF header) and travels as
// the `bearer` subprotocol, never in a URL or the page. Tools that need a workspace cannot
// run in a browser: each tool_call of a turn started here is answered with an error.
// Plans (docs/agent-runtime.md, "Planning") show as checklists that plan_update,
// plan_progress and execution_completed keep current; their buttons send plan_decision.
"use strict";
(function () {
  const root = document.getElementById("chat");
  if (!root) return;
  const sessionId = root.dataset.session;
  const wsBase = root.dataset.wsBase;
  const csrf = root.dataset.csrf;
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const agent = document.getElementById("chat-agent");
  const send = document.getElementById("chat-send");
  const state = document.getElementById("chat-state");
  let socket = null;
  let lastSeq = 0;
  let sentHere = false;          // tool calls are answered only for turns started on this page
  let retries = 0;
  const streaming = new Map();   // message_id -> bubble being streamed

  const setState = (text, connected) => {
    state.textContent = text;
    state.classList.toggle("connected", !!connected);
    send.disabled = !connected;
  };
  const scroll = () => window.scrollTo(0, document.body.scrollHeight);
  function bubble(kind, text, agentName) {
    const item = document.createElement("li");
    item.className = "bubble bubble-" + kind;
    if (agentName) {
      const label = document.createElement("span");
      label.className = "bubble-agent";
      label.textContent = agentName;
      item.appendChild(label);
    }
    const body = document.createElement("span");
    body.className = "bubble-text";
    body.textContent = text || "";
    item.appendChild(body);
    log.appendChild(item);
    scroll();
    return item;
  }
  const textOf = (item) => item.querySelector(".bubble-text");

  // Plans: plan_id -> { plan (the PlanView), item (its bubble), sent (a decision in flight) }.
  const plans = new Map();
  const MARKERS = { pending: "○", in_progress: "▶", completed: "✔", failed: "✖", skipped: "↷", cancelled: "⊘" };
  const FINAL = ["completed", "rejected", "cancelled"];
  const words = (status) => String(status || "").replace(/_/g, " ");
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function decide(planId, decision, feedback) {
    const entry = plans.get(planId);
    if (!entry || !socket || socket.readyState !== WebSocket.OPEN) return;
    const frame = { type: "plan_decision", plan_id: planId, decision: decision };
    if (feedback) frame.feedback = feedback;
    sentHere = true;  // the plan's subtasks run in the turn this decision starts
    socket.send(JSON.stringify(frame));
    entry.sent = decision;
    renderPlan(entry);
  }
  function button(planId, decision, label, className) {
    const node = element("button", "button button-small " + className + " plan-" + decision, label);
    node.type = "button";
    node.dataset.decision = decision;
    node.addEventListener("click", () => decide(planId, decision));
    return node;
  }
  function renderPlan(entry) {
    const plan = entry.plan;
    const previous = entry.item.querySelector(".plan-feedback");
    const typed = previous ? previous.value : "";
    const card = element("article", "plan plan-" + plan.status);
    card.dataset.planId = plan.id;
    card.dataset.status = plan.status;
    const head = element("header", "plan-head");
    head.appendChild(element("h3", "", plan.title));
    head.appendChild(element("span", "pill plan-status plan-status-" + plan.status, words(plan.status)));
    head.appendChild(element("span", "badge", "version " + plan.version));
    const minutes = (plan.subtasks || []).reduce((sum, s) => sum + (s.estimated_time_minutes || 0), 0);
    head.appendChild(element("span", "muted small", "~" + minutes + " min"));
    card.appendChild(head);
    if (plan.description) card.appendChild(element("p", "plan-description", plan.description));
    const steps = element("ol", "plan-steps");
    for (const subtask of plan.subtasks || []) {
      const step = element("li", "plan-step step-" + subtask.status);
      step.dataset.subtask = String(subtask.id);
      step.dataset.status = subtask.status;
      const mark = element("span", "step-marker", MARKERS[subtask.status] || "○");
      mark.setAttribute("aria-hidden", "true");
      step.appendChild(mark);
      const body = element("div", "step-body");
      const line = element("div", "step-head");
      line.appendChild(element("span", "step-title", (subtask.id + 1) + ". " + subtask.title));
      line.appendChild(document.createTextNode(" "));
      line.appendChild(element("span", "badge", subtask.agent));
      line.appendChild(element("span", "muted small", " ~" + subtask.estimated_time_minutes + " min "));
      line.appendChild(element("span", "pill step-status", words(subtask.status)));
      body.appendChild(line);
      if (subtask.result) body.appendChild(element("p", "step-result", subtask.result));
      if (subtask.error) body.appendChild(element("p", "step-error tool-error", subtask.error));
      step.appendChild(body);
      steps.appendChild(step);
    }
    card.appendChild(steps);
    if (plan.summary) card.appendChild(element("p", "plan-outcome", plan.summary));
    if (entry.sent) {
      card.appendChild(element("p", "plan-sent muted small", "Sent: " + entry.sent + "…"));
    } else if (!FINAL.includes(plan.status)) {
      const actions = element("div", "plan-decide");
      if (plan.status === "awaiting_approval") {
        actions.appendChild(button(plan.id, "approve", "Approve", "approve"));
        actions.appendChild(button(plan.id, "reject", "Reject", "button-danger reject"));
        const modify = element("button", "button button-small button-secondary modify plan-modify-toggle", "Modify…");
        modify.type = "button";
        actions.appendChild(modify);
        const box = element("div", "plan-modify");
        box.hidden = !typed;
        const feedback = element("textarea", "plan-feedback");
        feedback.rows = 2;
        feedback.required = true;
        feedback.placeholder = "What should change in the plan?";
        feedback.setAttribute("aria-label", "What should change in the plan");
        feedback.value = typed;
        const sendChanges = element("button", "button button-small plan-modify-send", "Send changes");
        sendChanges.type = "button";
        sendChanges.addEventListener("click", () => {
          const text = feedback.value.trim();
          if (!text) { feedback.reportValidity(); feedback.focus(); return; }
          decide(plan.id, "modify", text);
        });
        modify.addEventListener("click", () => { box.hidden = false; feedback.focus(); });
        box.appendChild(feedback);
        box.appendChild(sendChanges);
        card.appendChild(actions);
        card.appendChild(box);
      } else {
        if (plan.status === "failed") {
          actions.appendChild(button(plan.id, "retry", "Retry", "retry"));
          actions.appendChild(button(plan.id, "skip", "Skip", "button-secondary skip"));
        }
        card.appendChild(actions);
      }
      actions.appendChild(button(plan.id, "cancel", "Cancel", "button-danger cancel"));
    }
    entry.item.replaceChildren(card);
    scroll();
  }
  // The whole plan (plan_approval_required, plan_update): a new checklist or a fresh one.
  function showPlan(plan) {
    if (!plan || !plan.id) return;
    let entry = plans.get(plan.id);
    if (!entry) {
      entry = { plan: plan, item: element("li", "bubble bubble-plan"), sent: null };
      entry.item.id = "plan-" + plan.id;
      log.appendChild(entry.item);
      plans.set(plan.id, entry);
    }
    entry.plan = plan;
    entry.sent = null;
    renderPlan(entry);
  }
  function planProgress(frame) {
    const entry = plans.get(frame.plan_id);
    if (!entry) return;
    const subtask = (entry.plan.subtasks || []).find((s) => s.id === frame.subtask_id);
    if (!subtask) return;
    subtask.status = frame.status;
    if (typeof frame.result === "string") subtask.result = frame.result;
    if (["approved", "awaiting_approval", "failed"].includes(entry.plan.status) && frame.status === "in_progress") {
      entry.plan.status = "in_progress";
    }
    entry.sent = null;
    renderPlan(entry);
  }
  function executionCompleted(frame) {
    const entry = plans.get(frame.plan_id);
    if (entry) {
      entry.plan.status = frame.status || entry.plan.status;
      if (frame.summary) entry.plan.summary = frame.summary;
      entry.sent = null;
      renderPlan(entry);
    }
    bubble("notice", "Plan " + words(frame.status || "ended"));
  }

  function onFrame(frame) {
    const meta = frame.metadata || {};
    if (typeof meta.seq === "number" && meta.seq > lastSeq) lastSeq = meta.seq;
    switch (frame.type) {
      case "session_info":
        setState("Connected · " + (frame.agent_type || "agent"), true);
        break;
      case "assistant_message": {
        const id = meta.message_id || "";
        let item = streaming.get(id);
        if (!frame.is_final) {
          if (!item) { item = bubble("assistant", "", meta.agent); streaming.set(id, item); }
          textOf(item).textContent += frame.content || "";
        } else {
          if (!item) item = bubble("assistant", "", meta.agent);
          textOf(item).textContent = frame.content || "";
          streaming.delete(id);
        }
        scroll();
        break;
      }
      case "agent_switched":
        bubble("notice", "Now with the " + (frame.to_agent || "next") + " agent" + (frame.reason ? ": " + frame.reason : ""));
        break;
      case "tool_call":
        if (sentHere) {
          bubble("tool", "Tool " + frame.tool_name + " needs a workspace: answered as unavailable in the browser");
          socket.send(JSON.stringify({
            type: "tool_result", call_id: frame.call_id, tool_name: frame.tool_name,
            error: "unavailable in the browser: " + frame.tool_name,
          }));
        } else {
          bubble("tool", "Tool " + frame.tool_name + " is waiting for the IDE");
        }
        break;
      case "approval_required":
        break;
      case "plan_approval_required":
      case "plan_update":
        showPlan(frame.plan);
        break;
      case "plan_progress":
        planProgress(frame);
        break;
      case "execution_completed":
        executionCompleted(frame);
        break;
      case "turn_finished":
        if (frame.content && frame.content !== "completed" && frame.content !== "awaiting_tools") {
          bubble("notice", "Turn " + frame.content);
        }
        send.disabled = false;
        break;
      case "warning":
        bubble("notice", frame.content || "");
        break;
      case "error":
        bubble("error", frame.content || frame.error || "error");
        // A refused decision (the plan no longer waits for it): offer the buttons again.
        for (const entry of plans.values()) {
          if (entry.sent) { entry.sent = null; renderPlan(entry); }
        }
        break;
      default:
        break;
    }
  }

  async function connect() {
    setState("Connecting…", false);
    let token;
    try {
      const response = await fetch("/console/token", {
        method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
      });
      if (response.status === 401) { window.location.assign("/console/login?next=" + encodeURIComponent(location.pathname)); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      token = (await response.json()).access_token;
    } catch (error) {
      setState("Cannot get a token (" + error.message + "); retrying…", false);
      window.setTimeout(connect, Math.min(30000, 1000 * 2 ** retries++));
      return;
    }
    let url = wsBase + "/api/v1/ws/" + encodeURIComponent(sessionId) + "?protocol=2";
    if (lastSeq > 0) url += "&last_seq=" + lastSeq;
    socket = new WebSocket(url, ["bearer", token]);
    socket.addEventListener("open", () => { retries = 0; });
    socket.addEventListener("message", (event) => {
      try { onFrame(JSON.parse(event.data)); } catch (error) { /* not JSON: ignore */ }
    });
    socket.addEventListener("close", (event) => {
      setState("Disconnected (" + event.code + "); reconnecting…", false);
      window.setTimeout(connect, Math.min(30000, 1000 * 2 ** retries++));
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    sentHere = true;
    bubble("user", text);
    socket.send(JSON.stringify({ type: "user_message", content: text, role: "user", agent_type: agent.value }));
    input.value = "";
    input.focus();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  connect();
})();
