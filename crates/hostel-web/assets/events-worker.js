// One event stream for all of a session's Hostel tabs. A browser keeps at most six
// HTTP/1.1 connections to a site, and a stream holds one for as long as its page is open:
// a stream per tab would leave none for pages and forms after a few tabs. Each page
// connects here (a worker per session: its name carries the session's CSRF token) and
// gets every event as a message.
const ports = new Set();
let es = null;

function send(m) {
  for (const p of ports) p.postMessage(m);
}

function open() {
  es = new EventSource("/ui/events");
  es.onopen = () => send({ type: "open" });
  es.onerror = () => {
    const closed = es.readyState === EventSource.CLOSED;
    send({ type: "error", closed });
    if (closed) es = null;
  };
  for (const name of ["changed", "gone", "console", "resync"]) {
    es.addEventListener(name, (e) => send({ type: name, data: e.data }));
  }
}

onconnect = (e) => {
  const port = e.ports[0];
  ports.add(port);
  port.onmessage = (m) => {
    if (m.data !== "bye") return;
    ports.delete(port);
    if (ports.size === 0 && es) {
      es.close();
      es = null;
    }
  };
  port.start();
  if (!es) open();
  else if (es.readyState === EventSource.OPEN) port.postMessage({ type: "open" });
};
