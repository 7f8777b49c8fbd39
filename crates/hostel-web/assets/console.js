// A console embedded in its page: the serial console through xterm.js, VGA through
// noVNC. The script asks for a single-use ticket (a POST with the page's CSRF token: a
// link from elsewhere opens nothing), then opens its websocket. Output goes to the
// terminal or canvas, never into the page's markup. Ctrl+] gives the keyboard back to
// the page. noVNC (some thirty modules) is loaded only for a VGA console.

const el = document.getElementById("console");
const status = document.getElementById("console-status");
const back = document.getElementById("console-back");
const say = (t) => { if (status) status.textContent = t; };
const state = (window.hostelConsole = { connected: false, closed: false, ticket: "" });
const leave = () => { if (back) back.focus(); };

// A ticket request that gets no answer within 10 s is asked again (three times in all).
async function ticket() {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  let r;
  for (let tries = 1; ; tries++) {
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), 10000);
    try {
      r = await fetch(`/vms/${encodeURIComponent(el.dataset.vm)}/console/${el.dataset.kind}/ticket`, {
        method: "POST",
        headers: { "x-csrf-token": csrf ? csrf.content : "", "content-type": "application/x-www-form-urlencoded" },
        body: "",
        signal: stop.signal,
      });
      break;
    } catch (e) {
      if (tries >= 3) throw new Error(`no answer to the ticket request (${e.message})`);
      say("connecting… (asking again)");
    } finally {
      clearTimeout(timer);
    }
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `the ticket was refused (${r.status})`);
  state.ticket = body.ticket.slice(0, 12);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + body.websocket;
}

function serial(url) {
  const term = new Terminal({ scrollback: 10000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === "keydown" && e.ctrlKey && e.key === "]") { leave(); return false; }
    return true;
  });
  const ws = new WebSocket(url, ["binary"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { say("connected"); Object.assign(state, { connected: true, connectedAt: Date.now() }); term.focus(); };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = () => {
    say("disconnected: reload the page to attach again");
    state.closed = true;
  };
  const enc = new TextEncoder();
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  window.hostelTerm = term;
}

async function vga(url) {
  const { default: RFB } = await import("/web/novnc/core/rfb.js");
  const rfb = new RFB(el, url, { shared: true, wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { say("connected"); Object.assign(state, { connected: true, connectedAt: Date.now() }); rfb.focus(); });
  rfb.addEventListener("disconnect", () => {
    say("disconnected: reload the page to attach again");
    state.closed = true;
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey && e.key === "]") { e.preventDefault(); e.stopPropagation(); rfb.blur(); leave(); }
  }, true);
  const cad = document.getElementById("send-cad");
  if (cad) cad.addEventListener("click", () => rfb.sendCtrlAltDel());
  window.hostelRfb = rfb;
}

ticket()
  .then((url) => (el.dataset.kind === "serial" ? serial(url) : vga(url)))
  .catch((e) => { say(`not attached: ${e.message}`); state.closed = true; });
