// Benchmark: the delay from a VM's state change to the browser showing it. Chromium shows
// the VM list filtered to one VM, following the event stream; this script changes the
// VM's state through the API (start, then destroy, ROUNDS times) and times, with one
// clock, the API call's start to the row's new state in the page.
//
// node bench-live.mjs URL USER:PASSWORD TOKEN VM ROUNDS   (prints one delay in ms per line)
import { chromium } from "playwright-core";

const [base, cred, token, vm, rounds = "20"] = process.argv.slice(2);
const [user, pw] = cred.split(":");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/login?next=${encodeURIComponent("/vms?q=" + vm)}`);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(pw);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL((u) => u.pathname === "/vms");
  await page.waitForFunction(() => window.hostelLive && window.hostelLive.connected, null, { timeout: 15000 });
  const cell = `tr[data-vm="${vm}"] [data-field="state"]`;
  for (let i = 0; i < Number(rounds) * 2; i++) {
    const op = i % 2 === 0 ? "start" : "destroy";
    const want = op === "start" ? "running" : "stopped";
    const t0 = performance.now();
    const wait = page.waitForFunction(([sel, w]) => {
      const c = document.querySelector(sel);
      return c && c.textContent.startsWith(w);
    }, [cell, want], { timeout: 30000, polling: "raf" });
    const r = await fetch(`${base}/api/v1/vms/${vm}/${op}`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: "{}",
    });
    if (!r.ok) throw new Error(`${op}: ${r.status} ${await r.text()}`);
    await wait;
    console.log((performance.now() - t0).toFixed(1));
  }
} finally {
  await browser.close();
}
