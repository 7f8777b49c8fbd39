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

  document.addEventListener("htmx:configRequest", (e) => {
    const m = document.querySelector('meta[name="csrf-token"]');
    if (m) e.detail.headers["X-CSRF-Token"] = m.content;
  });

  // Re-reads the live part of the page, keeping which VMs were chosen.
  function refresh() {
    const m = main();
    if (!m || typeof htmx === "undefined") return;
    if (m.dataset.live === "list") {
      const chosen = new Set(Array.from(m.querySelectorAll('input[name="vm"]:checked')).map((i) => i.value));
      htmx.ajax("GET", location.pathname + location.search, { target: "#vm-list", select: "#vm-list", swap: "outerHTML" })
        .then(() => {
          for (const i of document.querySelectorAll('input[name="vm"]')) if (chosen.has(i.value)) i.checked = true;
        });
    } else if (m.dataset.live === "vm") {
      htmx.ajax("GET", location.pathname, { target: "#vm-live", select: "#vm-live", swap: "outerHTML" });
    }
  }

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
      if (!row) return refresh();
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
  // (nobody is disconnected). This page's own attach comes first and is not news.
  function onConsole(ev) {
    const m = main();
    const c = window.hostelConsole;
    if (!m || m.dataset.live !== "console" || m.dataset.vm !== ev.name) return;
    if (!c || !c.connectedAt || Date.now() - c.connectedAt < 1500) return;
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
  function follow() {
    if (!("EventSource" in window)) return poll();
    const es = new EventSource("/ui/events");
    es.onopen = () => { failures = 0; live.connected = true; };
    es.onerror = () => {
      live.connected = false;
      if (++failures >= 3) { es.close(); poll(); }
    };
    const on = (name, f) => es.addEventListener(name, (e) => {
      live.events++;
      try { f(JSON.parse(e.data)); } catch (err) { console.error("hostel event", err); }
    });
    on("changed", (ev) => onChanged(ev.vm));
    on("gone", onGone);
    on("console", onConsole);
    on("resync", () => refresh());
  }

  function start() {
    if (document.querySelector('meta[name="csrf-token"]')) follow();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
