// Drives the noVNC console page in Debian's headless Chromium (playwright-core, no
// browser download): waits for the connection and a non-blank framebuffer, saves a
// screenshot, types lines into the guest's tty1 shell through noVNC's keyboard, then
// presses the page's Ctrl-Alt-Del button and waits until the display changes.
//
// node vga.mjs PAGE_URL SCREENSHOT.png PROFILE_DIR LINE...
import { chromium } from "playwright-core";

const [url, shot, profile, ...lines] = process.argv.slice(2);
if (!url || !shot || !profile) {
  console.error("usage: node vga.mjs PAGE_URL SCREENSHOT.png PROFILE_DIR LINE...");
  process.exit(2);
}

const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1024, height: 800 },
});
const fail = async (why) => {
  console.error(why);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log("page:", m.text()));
  await page.goto(url);
  await page.waitForFunction(() => window.hostelConnected === true, null, { timeout: 30000 });
  console.log("connected");

  // Pixels of noVNC's canvas that are not black; and a digest to see changes.
  const look = () => page.evaluate(() => {
    const c = document.querySelector("#screen canvas");
    if (!c || !c.width) return { lit: 0, digest: "" };
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let lit = 0, h = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] + d[i + 1] + d[i + 2] > 60) lit++;
      h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0;
    }
    return { lit, digest: `${c.width}x${c.height}:${h}` };
  });
  const until = async (what, ok, ms) => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await look();
      if (ok(v)) return v;
      if (Date.now() > end) await fail(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
      await page.waitForTimeout(200);
    }
  };
  // The shell prompt on tty1 lights some pixels.
  const first = await until("a non-blank framebuffer", (v) => v.lit > 200, 60000);
  console.log(`non-blank pixels: ${first.lit}`);
  await page.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);

  // Pointer: moves across the display and a click, which also focuses the canvas.
  const box = await page.locator("#screen canvas").boundingBox();
  for (let i = 1; i <= 10; i++) {
    await page.mouse.move(box.x + (box.width * i) / 12, box.y + (box.height * i) / 12);
  }
  await page.click("#screen canvas");
  console.log("pointer moved");
  // Keyboard.
  for (const line of lines) {
    await page.keyboard.type(line, { delay: 20 });
    await page.keyboard.press("Enter");
  }
  const typed = await until("the typed lines on screen", (v) => v.digest !== first.digest, 30000);
  console.log("typed");

  // Ctrl-Alt-Del from the page's button: the guest reboots and its screen changes.
  await page.waitForTimeout(500); // let the shell finish drawing before the reference
  await page.screenshot({ path: shot.replace(/\.png$/, "-typed.png") });
  const before = await look();
  await page.click("#cad");
  await until("the display to change after Ctrl-Alt-Del", (v) => v.digest !== before.digest, 60000);
  console.log("ctrl-alt-del: display changed");
  void typed;
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
