// Keeps the status page's figures fresh: polls /console/status.json (same origin, cookie
// session) and updates the cells the server rendered. Without JavaScript the page still shows
// the server's snapshot.
"use strict";
(function () {
  const root = document.getElementById("status");
  if (!root) return;
  const seconds = Math.max(1, parseInt(root.dataset.refreshSeconds || "5", 10));
  const setText = (el, text) => { if (el && el.textContent !== text) el.textContent = text; };
  const setPill = (el, ok, text) => {
    if (!el) return;
    setText(el, text);
    el.classList.toggle("pill-ok", ok);
    el.classList.toggle("pill-bad", !ok);
  };
  async function refresh() {
    try {
      const response = await fetch("/console/status.json", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { window.location.assign("/console/login?next=/console/status"); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      for (const figure of data.figures) setText(root.querySelector('[data-figure="' + figure.key + '"]'), figure.value);
      for (const service of data.services) {
        const row = root.querySelector('[data-service="' + service.name + '"]');
        if (!row) continue;
        setPill(row.querySelector('[data-field="health"]'), service.healthy, service.health_text);
        setPill(row.querySelector('[data-field="ready"]'), service.ready, service.ready_text);
        setText(row.querySelector('[data-field="version"]'), service.version);
        setText(row.querySelector('[data-field="uptime"]'), service.uptime);
        setText(row.querySelector('[data-field="problems"]'), service.problems);
      }
      setText(document.getElementById("status-updated"), data.updated);
      root.classList.add("live");
    } catch (error) {
      root.classList.remove("live");
    } finally {
      window.setTimeout(refresh, seconds * 1000);
    }
  }
  window.setTimeout(refresh, 1000);
})();
