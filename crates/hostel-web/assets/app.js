// Hostel's pages, made live. Everything works without this script; with it, VM changes
// stream in (server-sent events from /ui/events), the create form previews its quota and
// command line, and htmx requests carry the CSRF token. Text from the server is only ever
// set with textContent: a VM's name cannot become markup.
(function () {
  "use strict";
  const main = () => document.getElementById("main");
  const live = (window.hostelLive = { connected: false, events: 0, polling: false });

  function announce(text) {
    const a = document.getElementById("announce");
    if (a) a.textContent = text;
  }

  // A VM archive is sent as it is read, its progress shown; the answer is a redirect
  // to the page that says how it went.
  document.addEventListener("submit", (e) => {
    const f = e.target;
    if (!f || f.id !== "import-form") return;
    e.preventDefault();
    const file = f.elements.file.files[0];
    if (!file) return;
    const q = new URLSearchParams();
    if (f.elements.name.value.trim()) q.set("name", f.elements.name.value.trim());
    if (f.elements.start.checked) q.set("start", "on");
    const bar = document.getElementById("import-progress");
    const status = document.getElementById("import-status");
    const x = new XMLHttpRequest();
    x.open("POST", "/vms/import?" + q.toString());
    x.setRequestHeader("Content-Type", "application/octet-stream");
    const m = document.querySelector('meta[name="csrf-token"]');
    if (m) x.setRequestHeader("X-CSRF-Token", m.content);
    bar.hidden = false;
    x.upload.onprogress = (p) => {
      if (!p.lengthComputable) return;
      bar.value = p.loaded / p.total;
      status.textContent = "sending: " + Math.round((100 * p.loaded) / p.total) + " %";
    };
    x.upload.onload = () => { status.textContent = "checking the archive…"; };
    x.onload = () => {
      let to = "/vms/new";
      try { to = JSON.parse(x.responseText).to || to; } catch (_) { /* the create page says why */ }
      location.href = to;
    };
    x.onerror = () => { status.textContent = "the upload broke off: try again"; };
    x.send(file);
  });

  document.addEventListener("htmx:configRequest", (e) => {
    const m = document.querySelector('meta[name="csrf-token"]');
    if (m) e.detail.headers["X-CSRF-Token"] = m.content;
  });

  // Re-reads the live parts of the page: on a VM's page its facts and its state's
  // buttons (never the forms, which may hold what the user is typing); on the list, the
  // list, keeping which VMs are chosen. Bursts of events make one request at a time.
  let again = false, running = false;
  function refresh() {
    if (running) { again = true; return; }
    const m = main();
    if (!m || typeof htmx === "undefined") return;
    running = true;
    let parts;
    if (m.dataset.live === "list") {
      let chosen = new Set();
      const keep = () => { chosen = new Set(Array.from(document.querySelectorAll('input[name="vm"]:checked')).map((i) => i.value)); };
      document.addEventListener("htmx:beforeSwap", keep, { once: true });
      parts = htmx.ajax("GET", location.pathname + location.search, { target: "#vm-list", select: "#vm-list", swap: "outerHTML" })
        .then(() => {
          for (const i of document.querySelectorAll('input[name="vm"]')) if (chosen.has(i.value)) i.checked = true;
        });
    } else if (m.dataset.live === "vm") {
      const get = (id) => htmx.ajax("GET", location.pathname, { target: id, select: id, swap: "outerHTML" });
      parts = get("#vm-facts").then(() => get("#vm-buttons"));
    } else {
      running = false;
      return;
    }
    parts.finally(() => {
      running = false;
      if (again) { again = false; setTimeout(refresh, 100); }
    });
  }

  // Whether the list is filtered (a VM that is not shown may not belong in it).
  const filtered = () => /[?&](q|state|host|owner|after)=[^&]/.test(location.search);

  function mib(v) {
    if (v >= 1024 && v % 1024 === 0) return v / 1024 + " GiB";
    if (v >= 1024) return (v / 1024).toFixed(1) + " GiB";
    return v + " MiB";
  }

  function setState(cell, vm) {
    if (!cell) return;
    const span = document.createElement("span");
    span.className = "state state-" + vm.state;
    span.textContent = vm.state;
    cell.replaceChildren(span);
    if (vm.state_reason) {
      const r = document.createElement("span");
      r.className = "reason";
      r.textContent = " " + vm.state_reason;
      cell.append(" ", r);
    }
  }

  function onChanged(vm) {
    const m = main();
    if (!m) return;
    if (m.dataset.live === "list") {
      const row = Array.from(m.querySelectorAll("tr[data-vm]")).find((r) => r.dataset.vm === vm.name);
      if (!row) return filtered() ? undefined : refresh();
      setState(row.querySelector('[data-field="state"]'), vm);
      const set = (f, v) => { const c = row.querySelector('[data-field="' + f + '"]'); if (c) c.textContent = v; };
      set("memory", mib(vm.memory_mib));
      set("vcpus", String(vm.vcpus));
      set("host", vm.host || "");
      set("ips", (vm.ips || []).join(", "));
      set("dns", (vm.dns_names || []).join(", "));
      announce(vm.name + " is " + vm.state);
    } else if (m.dataset.live === "vm" && m.dataset.vm === vm.name) {
      const st = document.getElementById("vm-state");
      if (st) { st.className = "state state-" + vm.state; st.textContent = vm.state; }
      announce(vm.name + " is " + vm.state);
      refresh();
    }
  }

  function onGone(ev) {
    const m = main();
    if (!m) return;
    if (m.dataset.live === "list") {
      const row = Array.from(m.querySelectorAll("tr[data-vm]")).find((r) => r.dataset.vm === ev.name);
      if (row) row.remove();
      announce(ev.name + " is gone");
    } else if (m.dataset.live === "vm" && m.dataset.vm === ev.name) {
      announce(ev.name + " was deleted");
      const st = document.getElementById("vm-state");
      if (st) st.textContent = "deleted";
    }
  }

  // Someone attached another console to the VM of the console on this page: say so
  // (nobody is disconnected). This page's own attach (its ticket's) is not news.
  function onConsole(ev) {
    const m = main();
    const c = window.hostelConsole;
    if (!m || m.dataset.live !== "console" || m.dataset.vm !== ev.name) return;
    if (!c || !c.connected || (ev.ticket && ev.ticket === c.ticket)) return;
    const st = document.getElementById("console-status");
    if (st) st.textContent = "connected; " + ev.note + " (you stay connected)";
  }

  // The stream; after three failures in a row, plain polling every 5 s instead.
  let failures = 0;
  function poll() {
    if (live.polling) return;
    live.polling = true;
    setInterval(() => { if (document.visibilityState === "visible") refresh(); }, 5000);
  }
  function dispatch(type, data) {
    live.events++;
    try {
      const ev = JSON.parse(data);
      if (type === "changed") onChanged(ev.vm);
      else if (type === "gone") onGone(ev);
      else if (type === "console") onConsole(ev);
      else if (type === "resync") refresh();
    } catch (err) { console.error("hostel event", err); }
  }

  // The session's one stream, shared by its tabs through a worker (see
  // events-worker.js); a browser without shared workers opens its own.
  function follow(csrf) {
    const opened = () => { failures = 0; live.connected = true; };
    const failed = (closed) => {
      live.connected = false;
      // A refusal (an ended session) closes the stream for good at once.
      if (closed || ++failures >= 3) { stop(); poll(); }
    };
    let stop = () => {};
    if ("SharedWorker" in window) {
      const w = new SharedWorker("/ui/events-worker.js", { name: "hostel-events-" + csrf });
      w.port.onmessage = (m) => {
        const d = m.data;
        if (d.type === "open") opened();
        else if (d.type === "error") failed(d.closed);
        else dispatch(d.type, d.data);
      };
      w.port.start();
      addEventListener("pagehide", () => w.port.postMessage("bye"));
      stop = () => w.port.postMessage("bye");
      return;
    }
    if (!("EventSource" in window)) return poll();
    const es = new EventSource("/ui/events");
    stop = () => es.close();
    es.onopen = opened;
    es.onerror = () => failed(es.readyState === EventSource.CLOSED);
    for (const name of ["changed", "gone", "console", "resync"]) {
      es.addEventListener(name, (e) => dispatch(name, e.data));
    }
  }

  // After a page swapped in by a boosted link or form: focus the first field in error,
  // else the page's main part, and say its message (a new live region is not read).
  document.addEventListener("htmx:afterSettle", (e) => {
    if (!e.detail.boosted) return;
    const bad = document.querySelector('[aria-invalid="true"]');
    const m = main();
    if (bad) bad.focus();
    else if (m) m.focus({ preventScroll: true });
    const f = document.querySelector("#flash .flash");
    if (f) announce(f.textContent.trim());
  });

  function start() {
    const csrf = document.querySelector('meta[name="csrf-token"]');
    if (csrf) follow(csrf.content);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
