// The web UI as an admin uses it, in Debian's headless Chromium against a real `hostel
// up` with a second host: the host's agent stops, and its row goes offline, then stale
// (greyed); a quota edited on its page changes what a member's create form offers; a
// VM's limits are set on its page, and everybody's default limits on the quotas page; a backup target is added and a VM backed up from its
// page; a Xen config is tried on the images page. Every
// admin page is audited with axe-core (WCAG 2.1 AA) and must load without a CSP
// violation; screenshots of the admin pages go to SHOTS.
//
// node admin.mjs URL SHOTS_DIR
// Environment: ADMIN and ALICE (user:password), AGENT_PID (node2's agent, started by the
// test, which this script stops), HOST (its name, node2), BACKUP_DIR (a directory for
// backups).
import { problems, step, context, audit, shoot as shootIn, until, finish } from "./harness.mjs";

const [base, shots] = process.argv.slice(2);
const [admin, adminPw] = process.env.ADMIN.split(":");
const [alice, alicePw] = process.env.ALICE.split(":");
const host = process.env.HOST || "node2";
const shoot = (page, name) => shootIn(page, shots, name);

async function login(page, user, pw, next) {
  await page.goto(`${base}/login?next=${encodeURIComponent(next)}`);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(pw);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.getByRole("button", { name: "Log in" }).click()]);
}


try {
  const a = await context();
  const page = await a.newPage();
  step("an admin logs in; every admin page passes axe");
  await login(page, admin, adminPw, "/admin/hosts");
  for (const p of ["/admin/hosts", "/admin/users", "/admin/groups", "/admin/quotas", "/admin/images",
    "/admin/networks", "/admin/pools", "/admin/audit", "/account", "/vms"]) {
    const r = await page.goto(base + p);
    if (r.status() !== 200) problems.push(`${p}: ${r.status()}`);
    await audit(page, p);
  }
  await page.goto(base + "/admin/audit");
  await shoot(page, "admin-audit");
  await page.goto(base + "/account");
  await shoot(page, "account");

  step("a host whose agent stopped goes offline, then stale (greyed)");
  await page.goto(base + "/admin/hosts");
  const row = page.locator(`tr[data-host="${host}"]`);
  const cls = () => row.getAttribute("class");
  if (!(await cls()).includes("host-online")) throw new Error(`${host} is not online at first: ${await cls()}`);
  process.kill(Number(process.env.AGENT_PID), "SIGTERM");
  await until(`${host} to go offline`, async () => (await cls()).includes("host-offline") || (await cls()).includes("stale"), 20000);
  console.log(`row: ${await cls()}: ${await row.innerText()}`);
  await until(`${host} to go stale`, async () => (await cls()).includes("stale"), 30000);
  const text = await row.innerText();
  if (!/last report \d+ s ago|last report/.test(text)) throw new Error(`no age on the stale row: ${text}`);
  const grey = await row.locator("th").evaluate((e) => getComputedStyle(e).color);
  const normal = await page.locator("header .brand").evaluate((e) => getComputedStyle(e).color);
  if (grey === normal) throw new Error(`the stale row is not greyed (${grey})`);
  await shoot(page, "admin-hosts");

  step("a member's create form follows the quota an admin edits");
  const m = await context();
  const mp = await m.newPage();
  await login(mp, alice, alicePw, "/vms/new");
  const side = () => mp.locator("#create-side").innerText();
  const before = await side();
  if (before.includes("3 of 3 vCPUs left")) throw new Error(`the limit is there before it was set: ${before}`);
  await page.goto(`${base}/admin/quotas?owner=user:${alice}`);
  await page.locator("#q-vcpus_total").fill("3");
  await page.getByRole("button", { name: "Save the limits" }).click();
  await until("the quota to be saved", async () => (await page.locator("#flash").innerText()).length > 0, 10000);
  await audit(page, "/admin/quotas (saved)");
  // Typing in the form re-reads its side panel: the new limit shows, no reload.
  await mp.getByLabel("Name", { exact: true }).fill("quota-probe");
  await until("the create form to show the new limit", async () => (await side()).includes("3 of 3 vCPUs left"), 10000);
  const max = await mp.getByLabel("vCPUs").getAttribute("max");
  await mp.reload();
  const maxAfter = await mp.getByLabel("vCPUs").getAttribute("max");
  if (maxAfter !== "3") throw new Error(`the vCPU field's max is ${maxAfter} (before the reload: ${max})`);
  await page.locator("#q-vcpus_total").fill("5");
  await page.getByRole("button", { name: "Save the limits" }).click();
  await page.waitForTimeout(300);
  await mp.getByLabel("Name", { exact: true }).fill("quota-probe-2");
  await until("the create form to follow the second edit", async () => (await side()).includes("5 of 5 vCPUs left"), 10000);

  step("an admin sets a VM's limits on its page");
  await page.goto(`${base}/vms/capped`);
  await page.getByLabel("CPU weight (1 to 10,000; 100 by default)").fill("50");
  await page.getByLabel("Disk MiB/s, each disk").fill("4");
  await page.getByRole("button", { name: "Set limits" }).click();
  await until("the limits to be set", async () => (await page.locator("#flash").innerText()).includes("has its new limits"), 10000);
  await audit(page, "/vms/NAME (limits set)");
  if ((await page.getByLabel("Disk MiB/s, each disk").inputValue()) !== "4") throw new Error("the form does not show the limit set");

  step("an admin sets everybody's default limits; a VM's page shows them beside its own");
  await page.goto(`${base}/admin/quotas?owner=default`);
  await page.getByLabel("Network Mbit/s, each NIC").fill("20");
  await page.getByRole("button", { name: "Save the default limits" }).click();
  await until("the default limits to be saved", async () => (await page.locator("#flash").innerText()).includes("default limits of default are saved"), 10000);
  await audit(page, "/admin/quotas (default limits saved)");
  await page.goto(`${base}/vms/capped`);
  const held = await page.locator("dd[data-field=limits]").innerText();
  if (!held.includes("CPU weight 50") || !held.includes("network 20 Mbit/s (default)")) throw new Error(`the VM's limits: ${held}`);
  if ((await page.getByLabel("Network Mbit/s each way, each NIC").getAttribute("placeholder")) !== "20") throw new Error("the VM's form does not show the default it gets");
  await page.goto(`${base}/admin/quotas?owner=default`);
  await page.getByLabel("Network Mbit/s, each NIC").fill("");
  await page.getByRole("button", { name: "Save the default limits" }).click();
  await until("the default limits to be removed", async () => (await page.locator("#flash").innerText()).includes("are saved"), 10000);

  step("an admin adds a backup target, backs a VM up from its page and sees the backup");
  await page.goto(`${base}/admin/pools`);
  await page.getByLabel("Target name").fill("main");
  await page.getByLabel("Directory", { exact: true }).fill(process.env.BACKUP_DIR);
  await page.getByRole("button", { name: "Add the target" }).click();
  await until("the target to be added", async () => (await page.locator("#flash").innerText()).includes("is added"), 10000);
  await audit(page, "/admin/pools (a backup target)");
  await page.goto(`${base}/vms/capped`);
  await page.getByRole("button", { name: "Back up now" }).click();
  await until("the backup's task to succeed", async () => (await page.locator(".task-state").innerText()).includes("succeeded"), 60000);
  await page.goto(`${base}/vms/capped`);
  const backupRows = await page.locator("#backups tbody tr").count();
  if (backupRows !== 1) throw new Error(`the VM's page shows ${backupRows} backups, not 1`);
  await audit(page, "/vms/NAME (a backup)");

  step("an admin tries a Xen guest's config on the images page (a dry run)");
  await page.goto(`${base}/admin/images`);
  await page.getByLabel("Its config file").fill("name = 'oldweb'\nmemory = 96\nkernel = '/boot/vmlinuz-xen'\nvif = [ 'mac=00:16:3e:01:02:03, bridge=xenbr0' ]\ncpu_weight = 256\n");
  await page.getByLabel("Only show what it would make").check();
  await page.getByRole("button", { name: "Import" }).nth(1).click();
  await until("the dry run's report", async () => (await page.locator("#flash").innerText()).includes("It would make VM oldweb"), 10000);
  const said = await page.locator("#flash").innerText();
  if (!said.includes("memory 96 MiB") || !said.includes("line 5: cpu_weight")) throw new Error(`the report lacks what the config says: ${said}`);
  await audit(page, "/admin/images (Xen dry run)");
} catch (e) {
  problems.push(String((e && e.stack) || e));
}
await finish();
