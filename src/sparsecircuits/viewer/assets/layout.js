// The circuit layout shared by the circuit page and the evolution page: one column per site in
// forward order, residual-width nodes on the lane of their residual channel. Plain SVG and DOM.
"use strict";
const CircuitLayout = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const KINDS = ["attn.act_in", "attn.q", "attn.k", "attn.v", "attn.resid_delta", "mlp.act_in", "mlp.post_act", "mlp.resid_delta"];
  const RESIDUAL_KINDS = new Set(["attn.act_in", "attn.resid_delta", "mlp.act_in", "mlp.resid_delta"]);
  const TERMINALS = new Set(["embed", "position", "unembed"]);
  const ROW = 18, COL = 64, TOP = 46, LEFT = 60;

  const el = (tag, attrs, parent, ns) => {
    const node = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    if (parent) parent.appendChild(node);
    return node;
  };
  const nodeName = (n) => `${n.site}:${n.index}`;
  const kindOf = (site) => site.split(".").slice(1).join(".");
  const layerOf = (site) => Number(site.split(".")[0]);

  // Sublayer inputs of a model with concatenated positions hold position channels after the
  // d_model residual channels: those sit on position lanes, beside the `position` terminals.
  function layout(nodes, edges, dModel) {
    const D = dModel ?? Infinity;
    const laneOf = (end) => (end.site === "position" ? `p${end.index}`
      : !TERMINALS.has(end.site) && end.index >= D ? `p${end.index - D}` : `r${end.index}`);
    const layers = [...new Set(nodes.map((n) => layerOf(n.site)))].sort((a, b) => a - b);
    const hasPositions = edges.some((e) => e.src.site === "position");
    const columns = hasPositions ? ["embed", "position"] : ["embed"];
    const used = new Set(nodes.map((n) => n.site));  // a site with no kept node gets no column
    for (const layer of layers) for (const kind of KINDS) if (used.has(`${layer}.${kind}`)) columns.push(`${layer}.${kind}`);
    columns.push("unembed");
    const colX = new Map(columns.map((c, i) => [c, LEFT + i * COL]));
    const lanes = new Set();
    for (const n of nodes) if (RESIDUAL_KINDS.has(kindOf(n.site))) lanes.add(laneOf(n));
    for (const e of edges) for (const end of [e.src, e.dst]) if (TERMINALS.has(end.site)) lanes.add(laneOf(end));
    const laneList = [...lanes].sort((a, b) => a[0] === b[0] ? Number(a.slice(1)) - Number(b.slice(1)) : a[0] === "r" ? -1 : 1);
    const laneY = new Map(laneList.map((c, i) => [c, TOP + i * ROW]));
    const stacked = new Map();
    const position = new Map();
    for (const n of [...nodes].sort((a, b) => a.index - b.index)) {
      let y;
      if (RESIDUAL_KINDS.has(kindOf(n.site))) y = laneY.get(laneOf(n));
      else {
        const used = stacked.get(n.site) || 0;
        stacked.set(n.site, used + 1);
        y = TOP + used * ROW;
      }
      position.set(nodeName(n), { x: colX.get(n.site), y });
    }
    const terminalPos = (end) => ({ x: colX.get(end.site), y: laneY.get(laneOf(end)) });
    const posOf = (end) => position.get(nodeName(end)) || terminalPos(end);
    const rows = Math.max(laneList.length, ...[...stacked.values()], 1);
    const width = LEFT + columns.length * COL + 20, height = TOP + rows * ROW + 20;
    return { layers, columns, colX, laneList, laneY, position, terminalPos, posOf, width, height };
  }

  // The lanes, the column labels and the picture's size.
  function drawGrid(svg, L) {
    svg.setAttribute("width", L.width);
    svg.setAttribute("height", L.height);
    svg.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
    for (const c of L.laneList) {
      el("line", { class: "lane", x1: LEFT - 20, x2: L.width - 10, y1: L.laneY.get(c), y2: L.laneY.get(c) }, svg, true);
      el("text", { x: 4, y: L.laneY.get(c) + 3, text: `${c[0] === "r" ? "resid" : "pos"} ${c.slice(1)}` }, svg, true);
    }
    L.columns.forEach((c, i) => {
      const label = TERMINALS.has(c) ? c : `${layerOf(c)}.${kindOf(c).replace("attn.", "").replace("mlp.", "m.")}`;
      el("text", { class: "column-label", x: L.colX.get(c), y: 16 + (i % 2) * 12, "text-anchor": "middle", text: label }, svg, true);
    });
  }

  // An edge's SVG path: a curve between its ends, a bow above them for query-key edges.
  const edgePath = (a, b, kind) => `M ${a.x} ${a.y} ` + (kind === "qk" ? `Q ${(a.x + b.x) / 2} ${Math.min(a.y, b.y) - 14} ${b.x} ${b.y}`
    : `C ${(a.x + b.x) / 2} ${a.y} ${(a.x + b.x) / 2} ${b.y} ${b.x} ${b.y}`);

  return { KINDS, TERMINALS, el, nodeName, kindOf, layerOf, layout, drawGrid, edgePath };
})();
