// Helpers shared by the dashboard and the plan preview. Everything reaches the page through
// textContent (never innerHTML): device names and messages come from the network.
"use strict";

const lf = {};

lf.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

lf.num = (v) => (v === null || v === undefined || v === "" ? null : Number(v));

lf.ms = function (seconds) {
  const s = lf.num(seconds);
  if (s === null) return "–";
  const m = s * 1000;
  return (m >= 100 ? m.toFixed(0) : m >= 10 ? m.toFixed(1) : m.toFixed(2)) + " ms";
};

lf.bytes = function (n) {
  let v = lf.num(n);
  if (v === null) return "–";
  for (const unit of ["B", "KB", "MB", "GB", "TB"]) {
    if (Math.abs(v) < 1000 || unit === "TB") {
      return unit === "B" ? `${v.toFixed(0)} B` : `${v.toFixed(1)} ${unit}`;
    }
    v /= 1000;
  }
  return "–";
};

lf.rate = function (bytesPerS) {
  const v = lf.num(bytesPerS);
  return v ? `${(v * 8 / 1e6).toFixed(v * 8 >= 1e8 ? 0 : 1)} Mbit/s` : "–";
};

lf.flops = function (perS) {
  const v = lf.num(perS);
  return v ? `${(v / 1e9).toFixed(2)} GFLOP/s` : "–";
};

lf.percent = (ratio) => (lf.num(ratio) === null ? "–" : `${(ratio * 100).toFixed(0)} %`);

lf.joules = function (j) {
  const v = lf.num(j);
  if (v === null) return "–";
  return v >= 1000 ? `${(v / 1000).toFixed(2)} kJ` : v >= 1 ? `${v.toFixed(1)} J`
    : `${(v * 1000).toFixed(1)} mJ`;
};

lf.ago = function (seconds) {
  const s = lf.num(seconds);
  if (s === null) return "–";
  return s < 60 ? `${s.toFixed(1)} s ago` : `${(s / 60).toFixed(0)} min ago`;
};

lf.badge = (state) => lf.el("span", {class: "badge", "data-state": state}, state);

// A pipeline drawn left to right: the client, then a box per stage, with the link into each
// stage drawn as an arrow. `stages` items: {title, lines: [...], state, attrs}; `links`
// items (one per stage, the link INTO it): {lines: [...]}.
lf.chain = function (stages, links) {
  const chain = lf.el("div", {class: "chain"});
  chain.append(lf.el("div", {class: "stage client"}, lf.el("strong", {}, "client"),
                     lf.el("span", {}, "via the controller")));
  stages.forEach((stage, i) => {
    const link = links[i] || {lines: []};
    chain.append(lf.el("div", {class: "link"}, lf.el("span", {class: "arrow"}, "→"),
                       ...link.lines.map((l) => lf.el("span", {}, l))));
    chain.append(lf.el("div", Object.assign({class: "stage", "data-state": stage.state},
                                            stage.attrs || {}),
                       lf.el("strong", {}, stage.title),
                       ...stage.lines.map((l) => (l instanceof Node ? l
                                                  : lf.el("span", {}, l)))));
  });
  return chain;
};

lf.header = function (state) {
  const c = state.controller || {};
  const target = document.getElementById("controller");
  if (target) target.textContent = `controller ${c.address || ""} · layerfleet ${c.version}`;
};
