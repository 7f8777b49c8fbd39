// The web UI as a new user uses it, in Debian's headless Chromium (playwright-core, no
// browser download), against a real `hostel up`. Every page met is audited with axe-core
// (WCAG 2.1 AA) and must load without a Content-Security-Policy violation; screenshots
// of the main pages (desktop and phone width) go to SHOTS. A stopped VM is exported from
// its page and imported again from the create page.
//
// node ui.mjs URL SHOTS_DIR
// Environment: ALICE / BOB (user:password; bob is in group `team`, alice is not an
// admin), VM (the VM's name), ADMIN (user:password of an admin).
import { problems, step, context, audit, shoot as shootIn, until, finish } from "./harness.mjs";
import { unlinkSync } from "node:fs";

const [base, shots] = process.argv.slice(2);
const vm = process.env.VM || "webvm";
const [alice, alicePw] = (process.env.ALICE || "alice:pw").split(":");
const [bob, bobPw] = (process.env.BOB || "bob:pw").split(":");
const shoot = (page, name) => shootIn(page, shots, name);

async function login(page, user, pw, next = "/vms") {
  await page.goto(base + next);
  if (!page.url().includes("/login")) throw new Error(`not sent to the login page: ${page.url()}`);
  await audit(page, "/login");
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(pw);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.getByRole("button", { name: "Log in" }).click()]);
  const landed = new URL(page.url());
  if (landed.pathname + landed.search !== next) throw new Error(`after login: ${page.url()}, asked for ${next}`);
}


const flash = (page) => page.locator("#flash").innerText();

try {
  // ---- alice, a new user ----
  const a = await context();
  const page = await a.newPage();
  step("log in (and land on the page asked for)");
  await login(page, alice, alicePw, "/vms/new");
  await audit(page);
  await shoot(page, "create");

  step("create a VM from tiny in the form");
  await page.getByLabel("Name", { exact: true }).fill(vm);
  await page.getByLabel("Image").selectOption("tiny");
  await page.getByLabel("Memory (MiB)").fill("128");
  await page.getByLabel("Disk (MiB)").fill("64");
  await until("the CLI line to follow the form", async () =>
    (await page.locator("#cli-line").innerText()).includes(`hostel create ${vm} --image tiny --memory 128`), 10000)
    .catch(async (e) => { throw new Error(`${e.message}: ${await page.locator("#cli-line").innerText()}`); });
  await page.getByLabel("Start it once created").uncheck();
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(`**/vms/${vm}`);
  if (!(await flash(page)).includes(`${vm} is created`)) throw new Error(`no creation message: ${await flash(page)}`);
  await audit(page, "/vms/NAME");

  step("watch its state turn running without a reload");
  const list = await a.newPage();
  await list.goto(base + "/vms");
  await audit(list);
  await until("the event stream", () => list.evaluate(() => window.hostelLive && window.hostelLive.connected), 10000);
  await list.evaluate(() => { window.notReloaded = true; });
  const row = list.locator(`tr[data-vm="${vm}"] [data-field="state"]`);
  if (!(await row.innerText()).startsWith("stopped")) throw new Error(`row state: ${await row.innerText()}`);
  const clicked = Date.now();
  await page.getByRole("button", { name: "Start", exact: true }).click();
  await until("the list's row to say running", async () => (await row.innerText()).startsWith("running"), 60000);
  console.log(`list updated ${Date.now() - clicked} ms after the click`);
  if (!(await list.evaluate(() => window.notReloaded === true))) throw new Error("the list page was reloaded");
  await shoot(list, "vms");

  step("open the serial console and run a command");
  const con = await a.newPage();
  // From the VM's page, by its link, as a user gets there.
  await con.goto(`${base}/vms/${vm}`);
  await con.getByRole("link", { name: "Serial console" }).click();
  await con.waitForURL(`**/vms/${vm}/console/serial`);
  await until("the console to connect", () => con.evaluate(() => window.hostelConsole && window.hostelConsole.connected))
    .catch(async (e) => { throw new Error(`${e.message}: ${await con.locator("#console-status").innerText()}`); });
  await audit(con, "/vms/NAME/console/serial");
  const screen = () => con.evaluate(() => {
    const b = window.hostelTerm.buffer.active;
    let s = "";
    for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + "\n";
    return s;
  });
  await until("the guest to boot", async () => (await screen()).includes("HOSTEL-READY"), 120000);
  await con.locator("#console").click();
  await con.keyboard.type("echo web-$((6*7))", { delay: 10 });
  await con.keyboard.press("Enter");
  await until("the command's output", async () => (await screen()).includes("web-42"), 30000);
  await shoot(con, "console-serial");
  // A second console beside the first: both stay connected, the first is told.
  const con2 = await a.newPage();
  await con2.goto(`${base}/vms/${vm}/console/serial`);
  await until("the second console", () => con2.evaluate(() => window.hostelConsole && window.hostelConsole.connected));
  await until("the first console to be told", async () => (await screen()).includes("alice attached the serial console (web); you stay connected"), 10000);
  if (await con.evaluate(() => window.hostelConsole.closed)) throw new Error("the first console was closed by the second");
  await con2.close();

  step("open the VGA console and see a non-blank screen");
  const vga = await a.newPage();
  await vga.goto(`${base}/vms/${vm}`);
  await vga.getByRole("link", { name: "VGA console" }).click();
  await vga.waitForURL(`**/vms/${vm}/console/vga`);
  await until("VGA to connect", () => vga.evaluate(() => window.hostelConsole && window.hostelConsole.connected));
  await until("a non-blank screen", () => vga.evaluate(() => {
    const c = document.querySelector("#console canvas");
    if (!c || !c.width) return false;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
    return lit > 200;
  }), 60000);
  await audit(vga, "/vms/NAME/console/vga");
  // A serial console opened meanwhile is announced on the VGA page, which stays up.
  const con3 = await a.newPage();
  await con3.goto(`${base}/vms/${vm}/console/serial`);
  await until("the VGA page to be told", async () => (await vga.locator("#console-status").innerText()).includes("attached the serial console"), 10000);
  if (await vga.evaluate(() => window.hostelConsole.closed)) throw new Error("VGA was closed by a serial console");
  await con3.close();
  await con.close();
  await shoot(vga, "console-vga");
  await vga.close();

  step("see its use on the usage page, and its graphs of the day");
  const use = await a.newPage();
  await use.goto(base + "/usage");
  await audit(use);
  const useRow = use.locator(`#usage tr:has(a:text-is("${vm}"))`);
  await until("a usage row with CPU", async () => /\d+\.\d %/.test(await useRow.innerText()), 60000);
  await shoot(use, "usage");
  await use.goto(`${base}/vms/${vm}`);
  await use.getByRole("link", { name: "the last day" }).click();
  await until("the day's graphs", async () => (await use.locator("#graphs").innerText()).includes("one point every 60 s"), 30000);
  await use.close();

  step("resize memory");
  await page.bringToFront();
  await page.getByLabel(/^Memory \(MiB, up to/).fill("96");
  await page.getByRole("button", { name: "Set memory" }).click();
  await until("the memory message", async () => (await flash(page)).includes("now has 96 MiB"), 30000);
  await shoot(page, "vm");

  step("take and revert a snapshot");
  await page.getByLabel("New snapshot's name").fill("before");
  await page.getByRole("button", { name: "Take a snapshot" }).click();
  await until("the snapshot", async () => (await page.locator("#snapshots").innerText()).includes("before"), 60000);
  await page.locator("#actions details.danger").first().locator("summary").click();
  await page.getByRole("button", { name: `Power off ${vm}` }).click();
  await until("the VM to stop", async () => (await page.locator("#vm-state").innerText()).startsWith("stopped"), 30000);
  await page.getByRole("button", { name: "Revert to before" }).click();
  await until("the revert message", async () => (await flash(page)).includes("is back at snapshot before"), 60000);

  step("share it with a group; a member sees it in a second browser");
  const b = await context();
  const bp = await b.newPage();
  await login(bp, bob, bobPw);
  const before = await bp.goto(`${base}/vms/${vm}`);
  if (before.status() !== 404) throw new Error(`a stranger got ${before.status()} for another's VM page`);
  await audit(bp, "404");
  await page.getByLabel("Group that operates it too").selectOption("team");
  await page.getByRole("button", { name: "Save sharing" }).click();
  await until("the sharing message", async () => (await flash(page)).includes("sharing changed"), 10000);
  await bp.goto(base + "/vms");
  await until("the shared VM in bob's list", async () => (await bp.locator(`tr[data-vm="${vm}"]`).count()) === 1, 10000);

  step("CSRF: a form without its token is refused");
  const refused = await page.evaluate(async (vm) => {
    const r = await fetch(`/vms/${vm}/do/start`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "x=1" });
    return r.status;
  }, vm);
  if (refused !== 403) throw new Error(`a form without its CSRF token got ${refused}`);

  step("without JavaScript: a member reads the VM's page and starts it");
  const plain = await context({ javaScriptEnabled: false });
  const pp = await plain.newPage();
  await pp.goto(base + "/login?next=/vms/" + vm);
  await pp.getByLabel("User name").fill(bob);
  await pp.getByLabel("Password").fill(bobPw);
  await pp.getByRole("button", { name: "Log in" }).click();
  await pp.waitForURL(`**/vms/${vm}`);
  await pp.getByRole("button", { name: "Start", exact: true }).click();
  await pp.waitForURL(`**/vms/${vm}`);
  if (!(await flash(pp)).includes(`${vm} is starting`)) throw new Error(`no-JS start: ${await flash(pp)}`);
  if (!(await pp.locator("#vm-state").innerText()).startsWith("running")) throw new Error("no-JS page does not say running");
  await plain.close();

  step("bulk: stop both VMs, each with its own result; then delete both");
  await page.goto(base + "/vms/new");
  await page.getByLabel("Name", { exact: true }).fill(vm + "2");
  await page.getByLabel("Memory (MiB)").fill("64");
  await page.getByLabel("Start it once created").uncheck();
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(`**/vms/${vm}2`);

  step("export the stopped VM from its page, and import the archive as a new VM");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Export (download an archive)" }).click()]);
  if (download.suggestedFilename() !== `${vm}2.hostel.tar`) throw new Error(`the download is named ${download.suggestedFilename()}`);
  const archive = `${shots}/${vm}2.hostel.tar`;
  await download.saveAs(archive);
  await page.goto(base + "/vms/new");
  await page.locator("#import-file").setInputFiles(archive);
  await page.getByLabel("Name (empty: the archive's)").fill(vm + "3");
  await Promise.all([page.waitForURL(`**/vms/${vm}3`), page.getByRole("button", { name: "Import", exact: true }).click()]);
  if (!(await flash(page)).includes(`VM ${vm}3 is imported`)) throw new Error(`after the import: ${await flash(page)}`);
  await audit(page, "/vms/NAME (imported)");
  unlinkSync(archive);

  await page.goto(base + "/vms");
  for (const n of [vm, vm + "2"]) await page.getByLabel(`Choose ${n}`, { exact: true }).check();
  await page.getByRole("button", { name: "Stop", exact: true }).click();
  await until("the bulk results", async () => (await flash(page)).includes(`${vm}: stopped`), 90000);
  const results = await flash(page);
  if (!results.includes(`${vm}2: `) || results.includes(`${vm}2: stopped`)) throw new Error(`bulk results: ${results}`);
  for (const n of [vm, vm + "2", vm + "3"]) await page.getByLabel(`Choose ${n}`, { exact: true }).check();
  await page.locator("#vm-list details.danger summary").click();
  await page.getByRole("button", { name: "Delete the chosen VMs" }).click();
  await until("the deletions", async () => (await flash(page)).includes(`${vm}2: deleted`), 30000);
  for (const n of [vm, vm + "3"]) if (!(await flash(page)).includes(`${n}: deleted`)) throw new Error(`bulk delete: ${await flash(page)}`);
  if ((await page.locator(`tr[data-vm="${vm}"]`).count()) !== 0) throw new Error("the deleted VM is still listed");
  await until("bob's list to lose it", async () => (await bp.locator(`tr[data-vm="${vm}"]`).count()) === 0, 10000);

  step("log out ends the session");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL("**/login");
  await page.goto(base + "/vms");
  if (!page.url().includes("/login")) throw new Error("still logged in after logging out");
  await shoot(page, "login");
} catch (e) {
  problems.push(String((e && e.stack) || e));
}
await finish();
