// What the browser tests share: Debian's Chromium (playwright-core, no browser
// download), contexts whose pages report CSP violations and script errors as problems,
// an axe-core WCAG 2.1 AA audit, screenshots at desktop and phone width, and waiting.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export const problems = [];
export const step = (s) => console.log("step:", s);

export const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

// (axe itself, run from the test, sets style attributes while it audits.)
let auditing = false;

// CSP violations and script errors are failures; failed responses are logged.
export function watch(page) {
  page.on("console", (m) => {
    const t = m.text();
    if (t.startsWith("CSP violation")) console.log(t);
    if (/Content Security Policy|Refused to/i.test(t) && !auditing) problems.push(`CSP on ${page.url()}: ${t}`);
  });
  page.on("response", (r) => { if (r.status() >= 400) console.log(`HTTP ${r.status()} ${r.url()}`); });
  page.on("pageerror", (e) => problems.push(`script error on ${page.url()}: ${e.message}`));
}

export async function context(options = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 }, ...options });
  await ctx.addInitScript(() => document.addEventListener("securitypolicyviolation", (e) =>
    console.log(`CSP violation: ${e.violatedDirective} by ${e.sourceFile}:${e.lineNumber}:${e.columnNumber} ${e.sample}`)));
  ctx.on("page", watch);
  return ctx;
}

const audited = new Set();
// Audits the page once per name (its path by default).
export async function audit(page, name) {
  const key = name || new URL(page.url()).pathname;
  if (audited.has(key)) return;
  audited.add(key);
  auditing = true;
  await page.evaluate(axeSource + "\n;0");
  const r = await page.evaluate(() => axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
  }));
  await page.waitForTimeout(50);
  auditing = false;
  for (const v of r.violations) {
    problems.push(`axe ${key}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join("; ")}`);
  }
  console.log(`axe ${key}: ${r.violations.length} violations, ${r.passes.length} rules passed`);
}

export async function shoot(page, dir, name) {
  if (!dir) return;
  await page.screenshot({ path: `${dir}/${name}-desktop.png` });
  const size = page.viewportSize();
  await page.setViewportSize({ width: 375, height: 740 });
  await page.waitForTimeout(150);
  await page.screenshot({ path: `${dir}/${name}-phone.png` });
  await page.setViewportSize(size);
}

export async function until(what, f, ms = 30000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Closes the browser and exits: 1 with every problem listed, else 0.
export async function finish() {
  await browser.close();
  if (problems.length) {
    for (const p of problems) console.error("PROBLEM:", p);
    process.exit(1);
  }
  console.log("all steps passed");
}
