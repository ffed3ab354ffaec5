// Plans in headless Chromium (docs/website.md): in the browser chat the architect proposes a
// plan, the chat shows it as a checklist with Approve / Reject / Modify, Approve sends a
// plan_decision and the checklist follows the run live (plan_progress, plan_update) up to the
// summary (execution_completed); then a second plan is approved on the session page, which
// lists both newest first and, after reloads, shows the second one completed.
//
// Run by tests/browser_plans.rs with: SITE_URL, ADMIN_PASSWORD, CHROMIUM, ARTIFACTS and
// NODE_PROJECT (see console.mjs). Prints one JSON line per step; exits non-zero at the first
// failure. The last step names the session and both plans for the Rust side to check.
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
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "codelab-chromium-"));

// The mock model's script for the architect: a one-subtask plan whose coder replies "did a".
const PLAN_MESSAGE = '::tool create_plan {"title":"T","description":"D","subtasks":[{"title":"a","description":"::reply did a","agent":"coder","estimated_time_minutes":1}]}';

const report = (step, extra = {}) => console.log(JSON.stringify({ step, ok: true, ...extra }));
const fail = (step, message) => {
  console.log(JSON.stringify({ step, ok: false, message }));
  throw new Error(`${step}: ${message}`);
};
const expect = (step, condition, message) => { if (!condition) fail(step, message); };
const shot = async (page, name) => {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
};
const card = (planId) => `article.plan[data-plan-id="${planId}"]`;

const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 860 },
});
const consoleErrors = [];
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));

  await page.goto(`${site}/console`);
  await page.click("#sign-in");
  await page.waitForSelector("input[name=username]");
  await page.fill("input[name=username]", "admin");
  await page.fill("input[name=password]", env("ADMIN_PASSWORD"));
  await Promise.all([page.waitForURL(/\/console\/status$/), page.click("button[value=login]")]);
  report("signed_in");

  // The browser chat: the architect proposes a plan, shown as a checklist.
  await page.goto(`${site}/console/chat`);
  await Promise.all([page.waitForURL(/\/console\/chat\/[^/]+$/), page.click("#new-chat")]);
  const sessionId = decodeURIComponent(new URL(page.url()).pathname.split("/").pop());
  await page.waitForSelector("#chat-state.connected", { timeout: 20000 });
  await page.selectOption("#chat-agent", "architect");
  await page.fill("#chat-input", PLAN_MESSAGE);
  await page.click("#chat-send");
  const waiting = ".bubble-plan article.plan[data-status='awaiting_approval']";
  await page.waitForSelector(waiting, { timeout: 30000 });
  const first = await page.getAttribute(waiting, "data-plan-id");
  const checklist = await page.textContent(card(first));
  for (const part of ["T", "awaiting approval", "version 1", "1. a", "coder", "~1 min", "pending"]) {
    expect("chat_plan", checklist.includes(part), `the checklist lacks ${part}: ${checklist}`);
  }
  for (const button of ["approve", "reject", "modify", "cancel"]) {
    expect("chat_plan", (await page.$(`${card(first)} button.${button}`)) !== null, `no ${button} button`);
  }
  // Modify needs feedback: without it nothing is sent.
  await page.click(`${card(first)} button.modify`);
  await page.click(`${card(first)} .plan-modify-send`);
  expect("chat_plan", (await page.$(`${card(first)} .plan-sent`)) === null, "a modify without feedback was sent");
  await shot(page, "20-chat-plan");
  report("chat_plan_shown", { plan: first });

  // Approve: the checklist follows the run without a reload.
  await page.evaluate(() => {
    window.stepStates = [];
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (!node.querySelectorAll) continue;
          for (const step of node.querySelectorAll(".plan-step")) window.stepStates.push(step.dataset.status);
        }
      }
    }).observe(document.getElementById("chat-log"), { childList: true, subtree: true });
  });
  await page.click(`${card(first)} button.approve`);
  await page.waitForSelector(`${card(first)}[data-status='completed'] .plan-step[data-status='completed']`, { timeout: 60000 });
  const seen = await page.evaluate(() => window.stepStates);
  const started = seen.indexOf("in_progress");
  expect("chat_plan_live", started >= 0 && seen.lastIndexOf("completed") > started,
    `the subtask's states as shown: ${JSON.stringify(seen)}`);
  const done = await page.textContent(card(first));
  expect("chat_plan_live", done.includes("did a"), `no result in ${done}`);
  const outcome = await page.textContent(`${card(first)} .plan-outcome`);
  expect("chat_plan_live", outcome.trim().length > 0, "no summary");
  expect("chat_plan_live", (await page.$(`${card(first)} button`)) === null, "a finished plan keeps buttons");
  await page.waitForSelector(".bubble-notice:has-text('Plan completed')", { timeout: 10000 });
  await shot(page, "21-chat-plan-done");
  report("chat_plan_live", { states: seen });

  // A second plan, decided on the session page.
  await page.fill("#chat-input", PLAN_MESSAGE);
  await page.click("#chat-send");
  await page.waitForSelector(waiting, { timeout: 30000 });
  const second = await page.getAttribute(waiting, "data-plan-id");
  expect("session_plan", second !== first, "the second plan has the first one's id");
  await page.goto(`${site}/console/sessions/${encodeURIComponent(sessionId)}`);
  await page.waitForSelector(`#plans ${card(second)}[data-status='awaiting_approval']`);
  const order = await page.$$eval("#plans article.plan", (cards) => cards.map((c) => c.dataset.planId));
  expect("session_plan", order.length === 2 && order[0] === second && order[1] === first,
    `the plans are not newest first: ${JSON.stringify(order)}`);
  const shown = await page.textContent(card(second));
  for (const part of ["awaiting approval", "version 1", "1. a", "coder", "~1 min", "pending"]) {
    expect("session_plan", shown.includes(part), `the plan lacks ${part}: ${shown}`);
  }
  for (const button of ["approve", "reject", "modify", "cancel"]) {
    expect("session_plan", (await page.$(`${card(second)} button.${button}`)) !== null, `no ${button} button`);
  }
  expect("session_plan", (await page.$(`${card(first)} button`)) === null, "the completed plan has buttons");
  expect("session_plan", (await page.$("#pending-title")) === null, "the plan's call is offered as a call too");
  expect("session_plan", (await page.textContent(card(first))).includes("did a"), "the first plan's result is missing");
  await shot(page, "22-session-plan");
  report("session_plan_shown");

  await Promise.all([page.waitForNavigation(), page.click(`${card(second)} button.approve`)]);
  const flash = await page.textContent(".flash-ok");
  expect("session_plan_approved", flash.includes("Plan approved"), `the page says ${flash}`);
  report("session_plan_approved");

  // The run goes on in the gateway; reloads show where it is.
  for (let i = 0; i < 120; i += 1) {
    if (await page.$(`${card(second)}[data-status='completed']`)) break;
    await page.waitForTimeout(250);
    await page.reload();
  }
  const finished = `${card(second)}[data-status='completed']`;
  expect("session_plan_completed", (await page.$(finished)) !== null, await page.textContent(card(second)));
  expect("session_plan_completed", (await page.$(`${finished} .plan-step[data-status='completed']`)) !== null, "the subtask is not completed");
  expect("session_plan_completed", (await page.textContent(finished)).includes("did a"), "no result");
  expect("session_plan_completed", (await page.$(`${finished} button`)) === null, "a completed plan keeps buttons");
  await shot(page, "23-session-plan-done");
  report("session_plan_completed");

  const cspViolations = consoleErrors.filter((e) => /Content Security Policy|Refused to/.test(e));
  expect("csp", cspViolations.length === 0, cspViolations.join("\n"));
  report("done", { session: sessionId, first, second, console_errors: consoleErrors.length });
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
