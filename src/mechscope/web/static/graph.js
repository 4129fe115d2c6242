// Circuit viewer: cytoscape over the page's data; a pruning slider keeping the k strongest edges
// (and saying how many edges and nodes it hides), node search, zoom, a panel for a clicked node.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const container = document.getElementById("graph");
  const cy = cytoscape({
    container: container,
    elements: {
      nodes: data.nodes.map(n => ({data: n, position: {x: n.x, y: n.y}})),
      edges: data.edges.map(e => ({data: e})),
    },
    layout: {name: "preset"},
    wheelSensitivity: 0.3,
    style: [
      {selector: "node", style: {"label": "data(id)", "font-size": 11, "text-valign": "center",
        "background-color": "#dbe4f0", "border-width": 1, "border-color": "#23395d", "width": 54, "height": 26,
        "shape": "round-rectangle"}},
      {selector: "node[?small]", style: {"label": "", "width": 16, "height": 16, "shape": "ellipse"}},
      {selector: "node[kind = 'logit']", style: {"background-color": "#f6d28b"}},
      {selector: "node[kind = 'mlp reconstruction error']", style: {"background-color": "#d9d9d9", "shape": "diamond"}},
      {selector: "node[kind = 'embedding']", style: {"background-color": "#c8e6c9", "shape": "square"}},
      {selector: "edge", style: {"width": "data(width)", "curve-style": "bezier", "target-arrow-shape": "triangle",
        "line-color": "#3a6fb0", "target-arrow-color": "#3a6fb0", "opacity": 0.75}},
      {selector: "edge.negative", style: {"line-color": "#c0392b", "target-arrow-color": "#c0392b"}},
      {selector: ".match", style: {"border-width": 3, "border-color": "#e67e22", "background-color": "#fde3c8"}},
      {selector: ".faded", style: {"opacity": 0.2}},
      {selector: "node:selected", style: {"border-width": 3, "border-color": "#000"}},
    ],
  });
  cy.edges().forEach(e => { if (e.data("score") < 0) e.addClass("negative"); });
  window.mechscopeGraph = cy;  // for the browser tests and the console

  const slider = document.getElementById("prune");
  const shown = document.getElementById("edge-count");
  function prune() {
    const keep = Number(slider.value);
    cy.batch(() => {
      cy.edges().forEach(e => e.style("display", e.data("rank") < keep ? "element" : "none"));
      cy.nodes().forEach(n => {
        const visible = n.connectedEdges().some(e => e.data("rank") < keep);
        n.style("display", visible ? "element" : "none");
      });
    });
    const drawnEdges = cy.edges().filter(e => e.style("display") === "element").length;
    const hiddenNodes = cy.nodes().filter(n => n.style("display") === "none").length;
    const cut = keep > 0 && keep <= data.edges.length ? Math.abs(data.edges[keep - 1].score) : 0;
    container.dataset.drawnEdges = String(drawnEdges);
    shown.textContent = `${drawnEdges} of ${data.total_edges} edges drawn, ${data.total_edges - drawnEdges} ` +
      `hidden (|score| below ${cut.toPrecision(3)}); ${hiddenNodes} nodes hidden with them`;
  }
  slider.addEventListener("input", prune);
  prune();

  const search = document.getElementById("node-search");
  const found = document.getElementById("search-count");
  search.addEventListener("input", () => {
    const text = search.value.trim().toLowerCase();
    cy.elements().removeClass("match faded");
    if (!text) { found.textContent = ""; return; }
    const matches = cy.nodes().filter(n => n.id().toLowerCase().includes(text) ||
                                           (n.data("label") || "").toLowerCase().includes(text));
    cy.elements().not(matches).addClass("faded");
    matches.addClass("match");
    found.textContent = `${matches.length} matching nodes`;
  });
  document.getElementById("fit").addEventListener("click", () => cy.fit(undefined, 30));

  const panel = document.getElementById("node-panel");
  function edgeRows(title, edges, other) {
    const section = document.createElement("div");
    const heading = document.createElement("h4");
    heading.textContent = `${title} (${edges.length})`;
    section.appendChild(heading);
    const list = document.createElement("ul");
    edges.sort((a, b) => Math.abs(b.data("score")) - Math.abs(a.data("score"))).slice(0, 20).forEach(e => {
      const item = document.createElement("li");
      const input = e.data("input") ? ` (${e.data("input")})` : "";
      item.textContent = `${other(e)}${input}: ${e.data("score").toPrecision(3)}` +
        (e.style("display") === "none" ? " — hidden by the slider" : "");
      list.appendChild(item);
    });
    section.appendChild(list);
    return section;
  }
  cy.on("tap", "node", event => {
    const node = event.target;
    panel.replaceChildren();
    const title = document.createElement("h3");
    title.textContent = node.id();
    panel.appendChild(title);
    const facts = document.createElement("p");
    const score = node.data("score");
    facts.textContent = `depth ${node.data("depth")}` + (score === null || score === undefined ? "" :
      `, node score ${score.toPrecision(3)}`);
    panel.appendChild(facts);
    if (node.data("label")) {
      const label = document.createElement("p");
      label.className = "explanation";
      label.textContent = node.data("label");
      panel.appendChild(label);
    }
    panel.appendChild(edgeRows("from", node.incomers("edge").toArray(), e => e.data("source")));
    panel.appendChild(edgeRows("to", node.outgoers("edge").toArray(), e => e.data("target")));
    panel.hidden = false;
  });
  cy.fit(undefined, 30);
})();
