// The live dashboard: polls /v1/status every second and renders it. The
// rates are the router's own, over its last second.
"use strict";

const POLL_MS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function badge(text, kind) {
  return el("span", { class: "badge " + kind }, text);
}

function statusBadge(instance) {
  if (instance.ejected) return badge("ejected", "bad");
  if (instance.shadow) return badge(instance.status + " · shadow", "info");
  if (instance.status === "passing" && !instance.routed) return badge("not routed", "warn");
  const kind = { passing: "ok", draining: "warn", critical: "bad" }[instance.status] || "";
  return badge(instance.status, kind);
}

function rate(value) {
  return value == null ? "–" : value.toFixed(1);
}

function render(doc) {
  const d = doc.directory || {};
  const directory = document.getElementById("directory");
  directory.replaceChildren(
    el("dt", {}, "url"), el("dd", {}, d.url ?? "–"),
    el("dt", {}, "reachable"), el("dd", {}, d.reachable ? badge("yes", "ok") : badge("no", "bad")),
    el("dt", {}, "view age"), el("dd", {}, d.view_age_secs == null ? "–" : d.view_age_secs.toFixed(1) + " s"),
    el("dt", {}, "view from"), el("dd", {}, d.view_source ?? "–"),
    el("dt", {}, "following"), el("dd", {}, Array.isArray(d.following) ? (d.following.join(", ") || "no service") : "every service"),
  );
  const brokers = document.getElementById("brokers");
  brokers.replaceChildren(...(doc.brokers || []).map((b) =>
    el("li", {}, b.adapter + " " + b.broker + " ", b.connected ? badge("connected", "ok") : badge("disconnected", "bad"))));

  const services = document.getElementById("services");
  const sections = Object.entries(doc.services || {}).map(([name, service]) => {
    const title = el("h2", {}, name, el("span", {}, service.policy));
    if (service.zone) {
      title.append(" ", service.zone_failover ? badge("zone " + service.zone + ": failing over", "warn") : badge("zone " + service.zone, "info"));
    }
    const head = el("tr", {}, ...["instance", "version", "weight", "zone", "status", "msg/s", "errors/s", "delivered", "errors", "in flight", "endpoint"].map((h) => el("th", {}, h)));
    const rows = service.instances.map((i) => {
      return el("tr", { "data-instance": name + "/" + i.id },
        el("td", {}, i.id), el("td", {}, i.version || "–"), el("td", { class: "num" }, i.weight),
        el("td", {}, i.zone || "–"), el("td", {}, statusBadge(i)),
        el("td", { class: "num rate" }, rate(i.rate)),
        el("td", { class: "num" }, rate(i.error_rate)),
        el("td", { class: "num delivered" }, i.delivered), el("td", { class: "num" }, i.errors),
        el("td", { class: "num" }, i.in_flight), el("td", {}, i.endpoint));
    });
    return el("div", { class: "service", "data-service": name }, title, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  });
  services.replaceChildren(...(sections.length ? sections : [el("p", {}, "No service yet.")]));
}

async function poll() {
  const state = document.getElementById("state");
  try {
    const response = await fetch("/v1/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const now = Date.now();
    render(await response.json());
    state.replaceWith(Object.assign(badge("live", "ok"), { id: "state" }));
    document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
  } catch (error) {
    state.replaceWith(Object.assign(badge("unreachable: " + error.message, "bad"), { id: "state" }));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
