// The console's live chat: protocol 2 over the gateway's WebSocket, with token streaming.
// The access token comes from POST /console/token (same origin, CSRF header) and travels as
// the `bearer` subprotocol, never in a URL or the page. Tools that need a workspace cannot
// run in a browser: each tool_call of a turn started here is answered with an error.
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
      case "turn_finished":
        if (frame.content && frame.content !== "completed" && frame.content !== "awaiting_tools") {
          bubble("notice", "Turn " + frame.content);
        }
        send.disabled = false;
        break;
      case "error":
        bubble("error", frame.content || frame.error || "error");
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
