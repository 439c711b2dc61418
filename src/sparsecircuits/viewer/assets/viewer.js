// The circuit viewer: plain SVG and DOM, no libraries. Data comes from the JSON block in the page.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("circuit-data").textContent);
  const { KINDS, TERMINALS, el, nodeName, kindOf, layerOf } = CircuitLayout;
  const fmt = (x, digits = 4) => (typeof x !== "number" ? String(x) : Number.isInteger(x) ? String(x) : x.toFixed(digits));
  // `#edges` shows the edge circuit (prune --edges) in place of the node circuit; the toggle reloads
  const edgeCircuit = data.circuit.edge_circuit;
  const showEdges = location.hash === "#edges" && Boolean(edgeCircuit);
  if (showEdges) { data.nodes = edgeCircuit.nodes; data.edges = edgeCircuit.edges; }
  window.addEventListener("hashchange", () => location.reload());
  const L = CircuitLayout.layout(data.nodes, data.edges, data.d_model);
  const { layers, position, terminalPos, posOf } = L;
  const svg = document.getElementById("graph");
  CircuitLayout.drawGrid(svg, L);

  // ---- edges ----
  const maxWeight = Math.max(1e-9, ...data.edges.filter((e) => e.kind === "weight").map((e) => Math.abs(e.weight)));
  const edgeGroup = el("g", {}, svg, true);
  const edgeElements = [];
  data.edges.forEach((e, i) => {
    const a = posOf(e.src), b = posOf(e.dst);
    const strength = e.kind === "weight" ? Math.abs(e.weight) / maxWeight : 0.35;
    const path = el("path", {
      class: "edge", d: CircuitLayout.edgePath(a, b, e.kind),
      stroke: e.kind === "qk" ? "#8a5cf6" : e.weight >= 0 ? "#2463eb" : "#dc2626",
      "stroke-width": (0.6 + 3.4 * Math.sqrt(strength)).toFixed(2),
      "data-src": nodeName(e.src), "data-dst": nodeName(e.dst), "data-index": i,
    }, edgeGroup, true);
    el("title", { text: `${nodeName(e.src)} → ${nodeName(e.dst)} (${e.kind}): weight ${fmt(e.weight)}` }, path, true);
    edgeElements.push(path);
  });

  // ---- nodes ----
  const terminals = new Set();
  for (const e of data.edges) for (const end of [e.src, e.dst]) if (TERMINALS.has(end.site)) terminals.add(nodeName(end));
  for (const name of terminals) {
    const [site, index] = name.split(":");
    const p = terminalPos({ site, index: Number(index) });
    el("rect", { class: "terminal", x: p.x - 4, y: p.y - 4, width: 8, height: 8 }, svg, true);
  }
  // a node's best Python concept, as "concept strength" (with (-) when it fires less there)
  const bestLabel = (name) => {
    const best = ((data.labels || {})[name] || { labels: [] }).labels[0];
    return best ? `${best.concept}${best.sign === "+" ? "" : " (-)"} ${fmt(best.strength, 2)}` : "";
  };
  const nodeColors = { q: "#fde68a", k: "#fcd34d", v: "#fbbf24", act_in: "#bfdbfe", resid_delta: "#a7f3d0", post_act: "#f9a8d4" };
  const nodeElements = new Map();
  for (const n of data.nodes) {
    const name = nodeName(n), p = position.get(name);
    const circle = el("circle", {
      class: "node", cx: p.x, cy: p.y, r: 6, tabindex: 0, "data-node": name, "data-layer": layerOf(n.site),
      "data-kind": kindOf(n.site), fill: nodeColors[n.site.split(".").pop()] || "#ddd",
    }, svg, true);
    const label = bestLabel(name);
    el("title", { text: label ? `${name}: ${label}` : name }, circle, true);
    if (label && data.nodes.length <= 300) {  // the whole label is the node's tooltip
      const concept = label.split(" ")[0];
      el("text", { class: "node-label", x: p.x + 8, y: p.y + 3, text: concept.length > 16 ? concept.slice(0, 15) + "…" : concept }, svg, true);
    }
    circle.addEventListener("click", () => select(name));
    circle.addEventListener("focus", () => select(name));
    nodeElements.set(name, circle);
  }

  // ---- filters ----
  const filters = document.getElementById("filters");
  const hidden = { layer: new Set(), kind: new Set() };
  const addFilter = (title, key, values) => {
    const box = el("fieldset", {}, filters);
    el("legend", { text: title }, box);
    for (const v of values) {
      const label = el("label", {}, box);
      const input = el("input", { type: "checkbox", checked: "checked", "data-filter": key, value: v }, label);
      label.append(` ${v}`);
      input.addEventListener("change", () => {
        if (input.checked) hidden[key].delete(String(v)); else hidden[key].add(String(v));
        applyFilters();
      });
    }
  };
  addFilter("layers", "layer", layers);
  addFilter("sites", "kind", KINDS.filter((k) => data.nodes.some((n) => kindOf(n.site) === k)));
  if (edgeCircuit) {
    const em = edgeCircuit.metrics, toggle = el("fieldset", {}, filters);
    el("legend", { text: "circuit" }, toggle);
    el("a", { id: "circuit-toggle", href: showEdges ? "#" : "#edges",
      text: showEdges ? `show the node circuit (${data.circuit.metrics.n_nodes} nodes, ${data.circuit.metrics.n_edges} weight edges)`
        : `show the edge circuit (${em.n_nodes} nodes, ${em.n_edges} weight edges)` }, toggle);
  }
  function applyFilters() {
    const visible = new Set();
    for (const [name, circle] of nodeElements) {
      const show = !hidden.layer.has(circle.dataset.layer) && !hidden.kind.has(circle.dataset.kind);
      circle.style.display = show ? "" : "none";
      if (show) visible.add(name);
    }
    for (const path of edgeElements) {
      const ok = (end) => visible.has(end) || terminals.has(end);
      path.style.display = ok(path.dataset.src) && ok(path.dataset.dst) ? "" : "none";
    }
  }

  // ---- details panel ----
  const details = document.getElementById("details");
  const shade = (act, scale) => {
    if (!act) return "transparent";
    const s = Math.min(1, Math.abs(act) / scale);
    return act > 0 ? `rgba(34, 160, 70, ${0.15 + 0.75 * s})` : `rgba(220, 38, 38, ${0.15 + 0.75 * s})`;
  };
  function contexts(parent, list, title) {
    el("h3", { text: title }, parent);
    if (!list || !list.length) { el("p", { class: "hint", text: "none" }, parent); return; }
    const scale = Math.max(1e-9, ...list.map((c) => Math.abs(c.value)));
    for (const ctx of list) {
      const line = el("div", { class: "context" }, parent);
      el("span", { class: "value", text: fmt(ctx.value, 3) }, line);
      ctx.tokens.forEach((tok, i) => {
        const span = el("span", { class: "tok" + (i === ctx.focus ? " focus" : ""), text: tok.replace(/\n/g, "↵"), title: fmt(ctx.acts[i], 3) }, line);
        span.style.background = shade(ctx.acts[i], scale);
      });
    }
  }
  function histogram(parent, h) {
    const w = 380, hgt = 90, max = Math.max(1, ...h.counts);
    const box = el("svg", { width: w, height: hgt + 16, class: "histogram" }, parent, true);
    const bw = w / h.counts.length;
    h.counts.forEach((c, i) => {
      const bh = c ? Math.max(1, (Math.log1p(c) / Math.log1p(max)) * hgt) : 0;
      const bar = el("rect", { x: i * bw, y: hgt - bh, width: bw - 1, height: bh, fill: "#64748b" }, box, true);
      el("title", { text: `[${h.edges[i]}, ${h.edges[i + 1]}): ${c}` }, bar, true);
    });
    el("text", { x: 0, y: hgt + 12, text: fmt(h.edges[0], 2) }, box, true);
    el("text", { x: w, y: hgt + 12, "text-anchor": "end", text: fmt(h.edges[h.edges.length - 1], 2) }, box, true);
  }
  function select(name) {
    for (const c of nodeElements.values()) c.classList.remove("selected");
    nodeElements.get(name).classList.add("selected");
    for (const path of edgeElements) {
      const touches = path.dataset.src === name || path.dataset.dst === name;
      path.classList.toggle("highlight", touches);
      path.classList.toggle("dim", !touches);
    }
    details.innerHTML = "";
    const [site, index] = name.split(":");
    el("h2", { text: `${site} : ${index}` }, details);
    const info = data.node_info[name] || {};
    const ablation = data.node_ablation[name];
    const labelled = (data.labels || {})[name];
    if (labelled) {
      el("h3", { text: "Python concepts (strength = 2·AUROC − 1 or |r|)" }, details);
      if (!labelled.labels.length) el("p", { class: "hint", text: "no concept above threshold" }, details);
      const t = el("table", { class: "labels" }, details);
      for (const entry of labelled.labels) {
        const tr = el("tr", {}, t);
        el("td", { text: `${entry.concept}${entry.sign === "+" ? "" : entry.auroc !== undefined ? " (negative activations)" : " (negative r)"}`, title: entry.description }, tr);
        el("td", { class: "num", text: fmt(entry.strength, 2) }, tr);
        el("td", { text: entry.auroc !== undefined ? `AUROC ${fmt(entry.auroc, 2)}, mass ${fmt(entry.mass_fraction, 2)}` : `r ${fmt(entry.correlation, 2)}` }, tr);
        el("td", { class: entry.beats_baseline === false ? "fail" : "", text: entry.beats_baseline === false
          ? `not above the shuffled-weights baseline (${fmt(labelled.baseline_best_strength, 2)})` : "" }, tr);
      }
    }
    if (ablation) {
      const t = el("table", {}, details);
      for (const [label, value] of [["task loss, full model without this node", ablation.loss_full_model_without_node],
                                    ["task loss, circuit without this node", ablation.loss_circuit_without_node]]) {
        if (value === undefined) continue;
        const tr = el("tr", {}, t);
        el("td", { text: label }, tr);
        el("td", { class: "num", text: fmt(value) }, tr);
      }
    }
    if (info.histogram) {
      el("h3", { text: `activations on ${info.tokens_seen} validation tokens (nonzero on ${(100 * info.fraction_nonzero).toFixed(1)}%; log-scale counts)` }, details);
      histogram(details, info.histogram);
    }
    contexts(details, info.top, "top activating contexts");
    contexts(details, info.bottom, "bottom activating contexts");
    for (const [title, key, other] of [["incoming edges", "dst", "src"], ["outgoing edges", "src", "dst"]]) {
      const list = data.edges.filter((e) => nodeName(e[key]) === name);
      el("h3", { text: `${title} (${list.length})` }, details);
      const ul = el("ul", { class: "edges-list" }, details);
      for (const e of list.slice(0, 60)) el("li", { text: `${nodeName(e[other])}  ${e.kind}  ${fmt(e.weight)}` }, ul);
      if (list.length > 60) el("li", { text: `… ${list.length - 60} more` }, ul);
    }
  }

  // ---- the paths that carry the answer, beside the graph ----
  const pathsBox = document.getElementById("paths");
  const paths = data.paths && (showEdges ? data.paths.edge : data.paths.node);
  if (paths) {
    el("h2", { text: "paths that carry the answer" }, pathsBox);
    el("p", { class: "hint", text: `The nodes add ${fmt(paths.delta, 3)} to the logit difference (correct − incorrect); ` +
      `the top 3 paths carry ${Math.round(100 * paths.top3_share)}% of it (of ${paths.n_paths}; a first-order split). ` +
      "tokens: enters where a node reads the residual stream; offset: a node's own." }, pathsBox);
    const list = el("ol", {}, pathsBox);
    for (const path of [...paths.paths.slice(0, 5), ...paths.against.slice(0, 1)]) {
      const item = el("li", {}, list);
      el("span", { class: "share", text: `${path.share >= 0 ? "+" : ""}${Math.round(100 * path.share)}%` }, item);
      path.nodes.forEach((name, i) => {
        if (i) item.append(" → ");
        if (!nodeElements.has(name)) { item.append(name); return; }
        const best = ((data.labels || {})[name] || {}).labels || [];
        const title = best.length ? best[0].concept + (best[0].beats_baseline === false ? " (not above baseline)" : "") : "";
        const link = el("a", { class: "node-link", text: name, title }, item);
        link.addEventListener("click", () => select(name));
      });
    }
  }

  // ---- tables ----
  const tables = document.getElementById("tables");
  function table(title, header, rowsData) {
    el("h2", { text: title }, tables);
    const t = el("table", {}, tables);
    const head = el("tr", {}, t);
    for (const h of header) el("th", { text: h }, head);
    for (const r of rowsData) {
      const tr = el("tr", {}, t);
      for (const cell of r) {
        const td = el("td", { text: typeof cell === "number" ? fmt(cell) : cell }, tr);
        if (typeof cell === "number") td.classList.add("num");
        if (cell === "pass") td.classList.add("pass");
        if (cell === "FAIL") td.classList.add("fail");
      }
    }
  }
  const m = showEdges ? { ...data.circuit.metrics, ...edgeCircuit.metrics } : data.circuit.metrics;
  // the headline counts weight edges, as the paper does; the other kinds are listed beside it
  const byKind = m.n_edges_by_kind || {};
  const otherKinds = Object.entries(byKind).filter(([k, n]) => k !== "weight" && n > 0).map(([k, n]) => `${n} ${k}`);
  const allEdges = Object.values(byKind).reduce((a, b) => a + b, 0) || m.n_edges;
  document.getElementById("summary").textContent = (showEdges ? "edge circuit: " : "") +
    `${m.n_nodes} nodes, ${m.n_edges} weight edges` + (otherKinds.length ? ` (besides: ${otherKinds.join(", ")})` : "") +
    `; task loss ${fmt(m.loss_full_model)} (full model), ` +
    `${fmt(m.loss_circuit)} (circuit), ${fmt(m.loss_circuit_ablated)} (circuit ablated); target ${data.circuit.target_loss}, ` +
    `${data.circuit.ablation} ablation; model ${data.circuit.model.name}` +
    (data.edges.length < allEdges ? ` (drawing the ${data.edges.length} strongest edges)` : "");
  table("metrics", ["metric", "value"], Object.entries(m).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, v]));
  const v = data.validation;
  if (v) {
    // validation.json from before the controls were written has none: those cells stay empty
    const controls = v.controls || {};
    const verdict = (name) => (controls[name] ? (controls[name].passed ? "pass" : "FAIL") : "");
    const rows = [["full model", v.loss_full_model, ""],
      ["circuit only (sufficiency)", v.loss_circuit, v.sufficient ? "pass" : "FAIL"],
      ["circuit only, logit scale calibrated", v.loss_circuit_calibrated, ""],
      ["circuit ablated (necessity)", v.loss_circuit_ablated, v.necessary ? "pass" : "FAIL"],
      ["random nodes, same size per site", v.loss_random_same_size, verdict("random_nodes")],
      ["empty circuit (every node ablated)", v.loss_empty_circuit, verdict("empty_circuit")]];
    for (const [name, key, control] of [["real labels", "control_real_fitted", ""],
      ["shuffled labels", "control_shuffled", "shuffled_labels"]]) {
      const c = v[key];
      if (!c || c.loss_test === undefined) continue;  // older validation.json: no same-footing figures
      rows.push([`${name}, node count chosen on the records fitted: ${c.n_nodes} nodes, ${c.n_edges} edges, ` +
        `${c.reached_target ? "reached" : "missed"} the target (loss fitted ${fmt(c.loss_fitted)}; on test records)`,
        c.loss_test, control ? verdict(control) : ""]);
    }
    const nonsense = v.control_nonsense;
    if (nonsense && nonsense.rule) {
      rows.push([`nonsense rule (${nonsense.rule}), pruned like the task: ${nonsense.n_nodes} nodes, ${nonsense.n_edges} edges ` +
        "(on its test records)", nonsense.loss_test, verdict("nonsense_rule")]);
    }
    if (v.controls) {
      const reasons = [...(v.sufficient ? [] : ["not sufficient"]), ...(v.necessary ? [] : ["not necessary"]),
        ...Object.values(controls).filter((c) => !c.passed).map((c) => c.why)];
      rows.push([v.evidence ? "evidence: sufficient, necessary, every control passed" : "NOT EVIDENCE: " + reasons.join("; "), "", ""]);
    }
    table("validation", ["check", "task loss", "verdict"], rows);
  } else {
    el("p", { class: "hint", text: "No validation.json yet: run `sparsecircuits validate` and view again." }, tables);
  }
  table("examples (held-out records)", ["prompt (end)", "correct", "incorrect", "full p(correct)", "full p(incorrect)",
    "circuit p(correct)", "circuit p(incorrect)"],
    data.examples.map((x) => [x.prompt.slice(-60), JSON.stringify(x.correct), JSON.stringify(x.incorrect),
      x.full[0], x.full[1], x.circuit[0], x.circuit[1]]));
})();
