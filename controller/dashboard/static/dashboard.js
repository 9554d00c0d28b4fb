// The live fleet page: renders /api/state snapshots and appends /api/stream events.
"use strict";

(function () {
  const {el, ms, bytes, rate, flops, percent, joules, ago, badge} = lf;
  const MAX_EVENTS = 200;
  let lastEventId = 0;

  function renderSummary(state) {
    const up = state.devices.filter((d) => d.state === "up").length;
    const serving = state.deployments.filter((d) => d.state === "active").length;
    const rps = state.deployments.reduce((sum, d) => sum + d.measured.rate_rps, 0);
    const watts = state.devices.filter((d) => d.state === "up")
      .reduce((sum, d) => sum + (d.power_w || 0), 0);
    const card = (label, value, id) => el("div", {class: "card", id},
                                          el("span", {class: "value"}, value),
                                          el("span", {class: "label"}, label));
    document.getElementById("summary").replaceChildren(
      card("devices up", `${up} / ${state.devices.length}`, "summary-devices"),
      card("deployments active", `${serving} / ${state.deployments.length}`,
           "summary-deployments"),
      card("requests / s (10 s)", rps.toFixed(1), "summary-rate"),
      card("fleet power", `${watts.toFixed(1)} W`, "summary-power"));
  }

  function renderDevices(devices) {
    const rows = devices.map((d) => el("tr", {"data-device": d.id, "data-state": d.state},
      el("td", {title: d.hostname}, d.id),
      el("td", {}, badge(d.state)),
      el("td", {}, d.address, el("small", {}, ` ${d.found_by}`)),
      el("td", {}, `${d.arch} × ${d.cores}`),
      el("td", {class: "num"}, percent(d.cpu_ratio)),
      el("td", {class: "num"}, `${bytes(d.memory_available_bytes)} / ${bytes(d.memory_bytes)}`),
      el("td", {class: "num"}, d.temperature_c === null ? "no sensor"
                                  : `${d.temperature_c.toFixed(1)} °C`),
      el("td", {class: "num"}, d.energy_method ? `${d.power_w.toFixed(2)} W` : "–",
         el("small", {}, d.energy_method ? ` ${d.energy_method}` : "")),
      el("td", {class: "num"}, joules(d.joules_total)),
      el("td", {class: "num"}, flops(d.flops_per_s)),
      el("td", {class: "num"}, `${rate(d.link_bandwidth_bytes_per_s)}, ${ms(d.link_rtt_s)}`),
      el("td", {class: "num"}, ago(d.last_seen_ago_s))));
    document.querySelector("#devices tbody").replaceChildren(...rows);
    document.getElementById("no-devices").hidden = devices.length > 0;
  }

  function renderLinks(links) {
    const rows = links.map((l) => el("tr", {},
      el("td", {}, l.a), el("td", {}, l.b),
      el("td", {class: "num"}, rate(l.bandwidth_bytes_per_s)),
      el("td", {class: "num"}, ms(l.rtt_s)),
      el("td", {}, new Date(l.measured_at * 1000).toLocaleTimeString())));
    document.querySelector("#links tbody").replaceChildren(...rows);
    document.getElementById("no-links").hidden = links.length > 0;
  }

  function renderDeployment(d) {
    const m = d.measured;
    const p = d.predicted;
    const stages = d.stages.map((s) => ({
      title: `stage ${s.stage}: ${s.device}`,
      state: s.state,
      attrs: {"data-stage": s.stage, "data-device": s.device},
      lines: [
        `layers ${s.start}–${s.stop - 1}` + (s.first_layer ? ` (${s.first_layer} … ` +
                                             `${s.last_layer})` : ""),
        s.replicas.length ? `replicas: ${s.replicas.join(", ")}` : null,
        `compute ${ms(s.predicted.compute_s)} planned · ${ms(s.measured.compute_mean_s)} ` +
          "measured",
        `queue ${ms(s.measured.queue_mean_s)} · ran ${s.measured.reached}`,
        s.exit ? el("span", {class: "exit"}, `exit: ${JSON.stringify(s.exit)}`) : null,
        s.measured.exits ? el("span", {class: "exit"}, `${s.measured.exits} exited here`)
          : null,
        s.devices_down.length ? el("span", {class: "error"},
                                   `down: ${s.devices_down.join(", ")}`) : null,
      ].filter((l) => l !== null),
    }));
    const links = d.stages.map((s) => ({lines: [
      `${bytes(s.predicted.bytes_in)} / request`,
      `${ms(s.predicted.transfer_in_s)} planned`,
      `${ms(s.measured.link_in_mean_s)} measured`,
      `${bytes(s.measured.bytes_in_total)} in all`,
    ]}));
    const errors = Object.entries(m.errors_by_code).map(([c, n]) => `${c} ${n}`).join(", ");
    return el("article", {class: "deployment", "data-deployment": d.name,
                          "data-state": d.state, "data-requests": m.requests,
                          "data-stages": d.stages.length},
      el("h3", {}, d.name, " ", badge(d.state),
         el("small", {}, ` model ${d.model} · ${p.strategy} plan for ${p.objective}`)),
      d.error ? el("p", {class: "error"}, d.error) : null,
      el("dl", {class: "figures"},
         el("dt", {}, "latency"),
         el("dd", {}, `${ms(p.latency_s)} planned · ${ms(m.latency_p50_s)} p50 · ` +
                      `${ms(m.latency_p90_s)} p90 measured`),
         el("dt", {}, "throughput"),
         el("dd", {}, `${p.throughput_rps.toFixed(1)}/s planned · ` +
                      `${m.rate_rps.toFixed(1)}/s now`),
         el("dt", {}, "energy"), el("dd", {}, `${joules(p.energy_j)} / request planned`),
         el("dt", {}, "requests"),
         el("dd", {class: "requests"}, `${m.requests} routed, ${m.errors} failed` +
                                       (errors ? ` (${errors})` : ""))),
      lf.chain(stages, links));
  }

  function renderDeployments(deployments) {
    document.getElementById("deployments").replaceChildren(...deployments.map(renderDeployment));
    document.getElementById("no-deployments").hidden = deployments.length > 0;
  }

  function render(state) {
    lf.header(state);
    renderSummary(state);
    renderDevices(state.devices);
    renderLinks(state.links);
    renderDeployments(state.deployments);
    document.body.dataset.updated = String(state.controller.time);
  }

  function addEvent(e) {
    if (e.id <= lastEventId) return;
    lastEventId = e.id;
    const list = document.getElementById("events");
    const when = new Date(e.time * 1000).toLocaleTimeString();
    list.prepend(el("li", {"data-kind": e.kind, "data-id": e.id},
                    el("time", {}, when), el("code", {}, e.kind),
                    el("strong", {}, e.subject), el("span", {}, e.message)));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function connect() {
    const status = document.getElementById("connection");
    const stream = new EventSource("/api/stream");
    stream.addEventListener("open", () => {
      status.textContent = "live";
      status.dataset.state = "live";
    });
    stream.addEventListener("error", () => {
      status.textContent = "reconnecting";
      status.dataset.state = "reconnecting";
    });
    stream.addEventListener("state", (msg) => render(JSON.parse(msg.data)));
    stream.addEventListener("fleet", (msg) => addEvent(JSON.parse(msg.data)));
  }

  connect();
})();
