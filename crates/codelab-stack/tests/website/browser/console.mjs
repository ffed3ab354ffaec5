// Drives headless Chromium through the website like a person: sign in through the auth
// service's form, the status page (live figures), the session the Flutter IDE replica made
// and its tool call, approving it, chatting with the ask agent (a tool answered as unavailable
// in the browser), the docs, the usage page (chart and budgets), signing out; then a non-admin meets 403 on the admin pages and
// a form posted without its CSRF token is refused.
//
// Run by tests/browser.rs with: SITE_URL, SESSION_ID, CALL_ID, ADMIN_PASSWORD, USER_PASSWORD,
// CHROMIUM, ARTIFACTS (screenshot folder) and NODE_PROJECT (a folder whose node_modules holds
// playwright-core; scripts/test prepares target/test-node). Prints one JSON line
// per step; exits non-zero at the first failure. A line {"step":"approved"} tells the Rust side
// to watch the IDE's socket.
import { mkdirSync, rmSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(join(env("NODE_PROJECT"), "package.json"));
const { chromium } = require("playwright-core");
const site = env("SITE_URL");
const sessionId = env("SESSION_ID");
const callId = env("CALL_ID");
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "codelab-chromium-"));

const report = (step, extra = {}) => console.log(JSON.stringify({ step, ok: true, ...extra }));
const fail = (step, message) => {
  console.log(JSON.stringify({ step, ok: false, message }));
  throw new Error(`${step}: ${message}`);
};
const expect = (step, condition, message) => { if (!condition) fail(step, message); };
const shot = async (page, name) => {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
};

async function signIn(page, username, password) {
  await page.goto(`${site}/console`);
  await page.click("#sign-in");
  await page.waitForSelector("input[name=username]");
  await page.fill("input[name=username]", username);
  await page.fill("input[name=password]", password);
  if (username === "admin") await shot(page, "01-login");
  await Promise.all([
    page.waitForURL(/\/console\/status$/),
    page.click("button[value=login]"),
  ]);
}

const context_options = { viewport: { width: 1280, height: 860 } };
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  ...context_options,
});
const consoleErrors = [];
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));

  // Sign in as the administrator.
  await signIn(page, "admin", env("ADMIN_PASSWORD"));
  report("signed_in", { url: page.url() });

  // Status: every service, and the figures kept fresh by the page's script.
  for (const service of ["auth", "gateway", "agent-runtime", "llm-proxy"]) {
    const health = await page.textContent(`[data-service="${service}"] [data-field="health"]`);
    expect("status", health.trim() === "healthy", `${service} is ${health}`);
  }
  await page.waitForSelector("#status.live", { timeout: 15000 });
  await shot(page, "02-status");
  report("status");

  // Sessions: the one the Flutter replica made.
  await page.goto(`${site}/console/sessions`);
  expect("sessions", (await page.content()).includes(sessionId), "the IDE's session is not listed");
  await shot(page, "03-sessions");
  report("sessions");

  // The session page: its tool call, waiting for approval.
  await page.click(`a[href="/console/sessions/${sessionId}"]`);
  await page.waitForSelector(`#approval-${callId}`);
  const pending = await page.textContent(`#approval-${callId}`);
  expect("session", pending.includes("write_file"), `the pending call shows ${pending}`);
  const calls = await page.textContent(".conversation");
  expect("session", calls.includes("write_file") && calls.includes("a.md"), "the tool call and its arguments are shown");
  await shot(page, "04-session-pending");
  report("session");

  await page.click(`#approval-${callId} button.approve`);
  await page.waitForSelector(".flash-ok");
  expect("approve", (await page.textContent(".flash-ok")).includes("Approved"), "no confirmation");
  report("approved");
  await shot(page, "05-session-approved");

  // Chat with the ask agent over the gateway's socket.
  await page.goto(`${site}/console/chat`);
  await shot(page, "06-chat-index");
  await Promise.all([page.waitForURL(/\/console\/chat\/[^/]+$/), page.click("#new-chat")]);
  await page.waitForSelector("#chat-state.connected", { timeout: 20000 });
  await page.selectOption("#chat-agent", "ask");
  await page.fill("#chat-input", "::reply hello from ask");
  await page.click("#chat-send");
  await page.waitForSelector(".bubble-assistant:has-text('hello from ask')", { timeout: 20000 });
  report("chat_reply");
  await page.fill("#chat-input", '::tool read_file {"path":"README.md"}');
  await page.click("#chat-send");
  await page.waitForSelector(".bubble-tool:has-text('unavailable in the browser')", { timeout: 20000 });
  await page.waitForFunction(() => {
    const bubbles = [...document.querySelectorAll(".bubble-assistant")];
    return bubbles.length >= 2 && bubbles.at(-1).textContent.includes("read_file");
  }, null, { timeout: 20000 });
  await shot(page, "07-chat");
  report("chat_tool_unavailable");

  // The docs.
  await page.goto(`${site}/docs/websocket-protocol`);
  await page.fill("#docs-q", "reconnect");
  await Promise.all([page.waitForURL(/\/docs\/search/), page.press("#docs-q", "Enter")]);
  expect("docs", (await page.content()).includes("/docs/websocket-protocol#reconnecting"), "search misses a heading");
  await page.goto(`${site}/docs/gateway`);
  await shot(page, "08-docs");
  report("docs");

  // Usage: the chat's calls in the totals, the chart drawn by the server (the page's HTML holds
  // its bars: no script needed), and for an administrator everyone against their budget.
  await page.goto(`${site}/console/usage`);
  const counted = Number((await page.textContent("#usage-requests")).trim());
  expect("usage", counted >= 2, `the chat's calls are counted: ${counted}`);
  const served = await (await page.request.get(`${site}/console/usage`)).text();
  expect("usage", served.includes('class="usage-segment"'), "the chart's bars are in the served HTML");
  expect("usage", (await page.locator("#usage-chart rect.usage-segment").count()) >= 1, "no bar drawn");
  expect("usage", (await page.textContent("#usage-by-agent")).includes("ask"), "the ask agent's use is listed");
  const admin_row = page.locator('#usage-users tr[data-user="admin"]');
  expect("usage", (await admin_row.count()) === 1, "the admin's row is missing");
  expect("usage", (await admin_row.locator("svg.budget-bar").count()) === 2, "the default budget's two bars");
  expect("usage", (await admin_row.textContent()).includes("daily tokens"), "the daily limit is named");
  await shot(page, "12-usage");
  report("usage");

  // The admin pages (as admin).
  await page.goto(`${site}/console/admin`);
  expect("admin", (await page.content()).includes('data-username="bob"'), "users are listed");
  await shot(page, "09-admin");
  report("admin");

  // Sign out.
  await Promise.all([page.waitForURL(`${site}/`), page.click("#logout")]);
  const after = await page.goto(`${site}/console/status`);
  expect("logout", page.url().includes("/oauth/authorize"), `signed out, yet ${page.url()} (${after.status()})`);
  report("logged_out");

  // A user who is not an administrator.
  await signIn(page, "bob", env("USER_PASSWORD"));
  const admin = await page.goto(`${site}/console/admin`);
  expect("non_admin", admin.status() === 403, `the admin page answered ${admin.status()}`);
  await shot(page, "10-forbidden");
  report("non_admin_forbidden");

  // A form posted without its CSRF token (with the session cookie) is refused.
  const forged = await page.request.post(`${site}/console/chat`, { form: { nothing: "here" }, maxRedirects: 0 });
  expect("csrf", forged.status() === 403, `a POST without a CSRF token answered ${forged.status()}`);
  const token = await page.request.post(`${site}/console/token`, { maxRedirects: 0 });
  expect("csrf", token.status() === 403, `the token without the CSRF header answered ${token.status()}`);
  report("csrf_refused");

  // The 404 page.
  const missing = await page.goto(`${site}/docs/no-such-page`);
  expect("not_found", missing.status() === 404, `answered ${missing.status()}`);
  await shot(page, "11-not-found");

  const cspViolations = consoleErrors.filter((e) => /Content Security Policy|Refused to/.test(e));
  expect("csp", cspViolations.length === 0, cspViolations.join("\n"));
  report("done", { console_errors: consoleErrors.length });
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
