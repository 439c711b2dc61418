// The evolution page: one task's circuit at each kept checkpoint, a slider over the steps.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("circuit-data").textContent);
  const { el, nodeName } = CircuitLayout;
  const fmt = (x, digits = 4) => (typeof x === "number" ? x.toFixed(digits) : "-");
  const steps = data.steps;
  // one layout over every checkpoint's nodes and edges: a node sits in the same place at every step
  const allNodes = new Map(), allEdges = [];
  for (const s of steps) {
    for (const n of s.nodes || []) allNodes.set(nodeName(n), n);
    allEdges.push(...(s.edges || []));
  }
  const L = CircuitLayout.layout([...allNodes.values()], allEdges, data.d_model);
  const svg = document.getElementById("graph");
  CircuitLayout.drawGrid(svg, L);
  const drawing = el("g", { id: "drawing" }, svg, true);

  // the circuit each step is compared with: the previous checkpoint that has one
  const previous = steps.map((_, i) => {
    for (let j = i - 1; j >= 0; j--) if (steps[j].nodes) return steps[j];
    return null;
  });

  const slider = document.getElementById("step-slider");
  slider.max = String(steps.length - 1);
  const draw = (i) => {
    const s = steps[i], before = previous[i];
    drawing.replaceChildren();
    document.getElementById("step-label").textContent = `step ${s.step}`;
    const summary = document.getElementById("step-summary");
    if (!s.nodes) {
      summary.textContent = `step ${s.step}: the full model's task loss ${fmt(s.task_loss)} misses the target ` +
        `${data.target_loss}: no circuit`;
      return;
    }
    const now = new Set(s.nodes.map(nodeName));
    const earlier = new Set(before ? before.nodes.map(nodeName) : []);
    const entered = [...now].filter((n) => !earlier.has(n)).length;
    const left = [...earlier].filter((n) => !now.has(n));
    summary.textContent = `step ${s.step}: ${s.n_nodes} nodes, ${s.n_edges} edges, circuit loss ${fmt(s.loss_circuit)} ` +
      `(full model ${fmt(s.task_loss)}); ` + (before ? `since step ${before.step}: ${entered} entered, ${left.length} left`
        : "the first circuit");
    for (const e of s.edges) {
      el("path", { class: "edge", d: CircuitLayout.edgePath(L.posOf(e.src), L.posOf(e.dst), e.kind),
                   stroke: e.kind === "qk" ? "#8a5cf6" : e.weight >= 0 ? "#2463eb" : "#dc2626", "stroke-width": 1.2 }, drawing, true);
    }
    for (const name of left) {
      const p = L.position.get(name);
      el("circle", { class: "node left", cx: p.x, cy: p.y, r: 6, "data-node": name }, drawing, true);
    }
    for (const name of now) {
      const p = L.position.get(name);
      const circle = el("circle", { class: `node ${earlier.has(name) || !before ? "persisting" : "entered"}`, cx: p.x, cy: p.y, r: 6,
                                    "data-node": name }, drawing, true);
      el("title", { text: name }, circle, true);
    }
  };
  slider.addEventListener("input", () => draw(Number(slider.value)));

  const table = document.getElementById("steps-table");
  const head = el("tr", {}, table);
  for (const h of ["step", "val loss", "L0", "task loss", "nodes", "edges", "evidence"]) el("th", { text: h }, head);
  steps.forEach((s, i) => {
    const tr = el("tr", {}, table);
    for (const v of [s.step, fmt(s.val_loss), fmt(s.l0_fraction), fmt(s.task_loss), s.n_nodes ?? "-", s.n_edges ?? "-",
                     s.nodes ? (s.evidence ? "yes" : "no") : "not reached"]) el("td", { text: String(v) }, tr);
    tr.addEventListener("click", () => { slider.value = String(i); draw(i); });
  });
  document.getElementById("summary").textContent = `${steps.length} kept checkpoints, target loss ${data.target_loss}; ` +
    `${steps.filter((s) => s.nodes).length} have a circuit.`;
  const first = steps.findIndex((s) => s.nodes);
  slider.value = String(Math.max(first, 0));
  draw(Math.max(first, 0));
})();
