// A console embedded in its page: the serial console through xterm.js, VGA through
// noVNC. The page asked the API for a single-use ticket; its websocket is in the
// element's data. Output is written to the terminal or canvas, never to the page's markup.
import RFB from "/web/novnc/core/rfb.js";

const el = document.getElementById("console");
const status = document.getElementById("console-status");
const say = (t) => { if (status) status.textContent = t; };
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const url = scheme + location.host + el.dataset.websocket;
window.hostelConsole = { connected: false, closed: false };

if (el.dataset.kind === "serial") {
  const term = new Terminal({ scrollback: 10000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  const ws = new WebSocket(url, ["binary"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { say("connected"); Object.assign(window.hostelConsole, { connected: true, connectedAt: Date.now() }); term.focus(); };
  ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
  ws.onclose = () => {
    say("disconnected: reload the page to attach again");
    window.hostelConsole.closed = true;
  };
  const enc = new TextEncoder();
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  window.hostelTerm = term;
} else {
  const rfb = new RFB(el, url, { shared: true, wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { say("connected"); Object.assign(window.hostelConsole, { connected: true, connectedAt: Date.now() }); rfb.focus(); });
  rfb.addEventListener("disconnect", () => {
    say("disconnected: reload the page to attach again");
    window.hostelConsole.closed = true;
  });
  const cad = document.getElementById("send-cad");
  if (cad) cad.addEventListener("click", () => rfb.sendCtrlAltDel());
  window.hostelRfb = rfb;
}
