// The plan preview: the Plan RPC's candidates for a model, side by side.
"use strict";

(function () {
  const {el, ms, bytes, joules} = lf;
  const form = document.getElementById("plan-form");

  function options(select, values, chosen) {
    select.replaceChildren(...values.map((v) => el("option", {value: v, selected: v === chosen},
                                                   v)));
  }

  async function load() {
    const state = await (await fetch("/api/state")).json();
    lf.header(state);
    const params = new URLSearchParams(location.search);
    options(form.model, state.models.map((m) => m.name), params.get("model"));
    options(form.objective, state.choices.objectives, params.get("objective") || "latency");
    options(form.redundancy, state.choices.redundancy, params.get("redundancy") || "none");
    if (params.get("sla_ms")) form.sla_ms.value = params.get("sla_ms");
    if (params.get("top")) form.top.value = params.get("top");
    if (params.get("model")) await plan();
  }

  function candidateCard(c, index) {
    const stages = c.stages.map((s, i) => ({
      title: `stage ${i}: ${s.device}`,
      state: "ready",
      attrs: {"data-device": s.device},
      lines: [
        `layers ${s.start}–${Number(s.stop) - 1} (${s.first_layer} … ${s.last_layer})`,
        s.replicas.length ? `replicas: ${s.replicas.join(", ")}` : null,
        `compute ${ms(s.compute_s)}`,
        `memory ${bytes(s.memory_bytes)} · energy ${joules(s.energy_j)}`,
      ].filter((l) => l !== null),
    }));
    const links = c.stages.map((s) => ({lines: [`${bytes(s.bytes_in)}`,
                                                `${ms(s.transfer_in_s)}`]}));
    return el("article", {class: "candidate", "data-candidate": index},
      el("h3", {}, `plan ${index}`, el("small", {}, ` ${c.strategy} · ${c.objective}`)),
      el("dl", {class: "figures"},
         el("dt", {}, "latency"), el("dd", {}, ms(c.latency_s)),
         el("dt", {}, "throughput"), el("dd", {}, `${Number(c.throughput_rps).toFixed(1)}/s`),
         el("dt", {}, "energy"), el("dd", {}, `${joules(c.energy_j)} / request`),
         el("dt", {}, "stages"), el("dd", {}, String(c.stages.length))),
      lf.chain(stages, links),
      el("p", {class: "hint"}, el("code", {}, `layerfleet deploy ${form.model.value} ` +
                                              `--plan ${index}`)));
  }

  async function plan() {
    const params = new URLSearchParams(new FormData(form));
    history.replaceState(null, "", `/plan?${params}`);
    const reply = await fetch(`/api/plan?${params}`);
    const body = await reply.json();
    const error = document.getElementById("plan-error");
    error.hidden = reply.ok;
    error.textContent = reply.ok ? "" : body.error;
    const cards = reply.ok ? body.candidates.map(candidateCard) : [];
    document.getElementById("candidates").replaceChildren(...cards);
    const rows = reply.ok ? body.baselines.map((b) => el("tr", {},
      el("td", {}, b.strategy), el("td", {class: "num"}, ms(b.latency_s)),
      el("td", {class: "num"}, `${Number(b.throughput_rps).toFixed(1)}/s`),
      el("td", {class: "num"}, joules(b.energy_j)),
      el("td", {}, b.stages.map((s) => s.device).join(" → ")))) : [];
    document.querySelector("#baselines tbody").replaceChildren(...rows);
    document.getElementById("baselines").hidden = rows.length === 0;
    document.getElementById("baselines-title").hidden = rows.length === 0;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    plan();
  });
  load();
})();
