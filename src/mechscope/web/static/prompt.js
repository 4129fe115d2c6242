// Prompt view: token activations of chosen units, the logit lens grid, attention by head.
"use strict";
(function () {
  const form = document.getElementById("prompt-form");
  const status = document.getElementById("prompt-status");
  const rows = document.getElementById("unit-rows");
  const layerPick = document.getElementById("att-layer");
  const headPick = document.getElementById("att-head");
  let current = null, patterns = null;
  const list = text => text.split(",").map(s => s.trim()).filter(Boolean);
  async function post(path, body) {
    const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(body)});
    const answer = await response.json();
    if (!response.ok) {
      const detail = Array.isArray(answer.detail) ? answer.detail.map(d => d.msg).join("; ") : answer.detail;
      throw new Error(detail);
    }
    return answer;
  }
  function shade(value, scale) {
    return value <= 0 || scale <= 0 ? "shade0" : `shade${Math.min(9, Math.floor(10 * value / scale))}`;
  }
  function drawUnits(result) {
    rows.replaceChildren();
    result.units.forEach(unit => {
      const line = document.createElement("div");
      line.className = "unit-row";
      const name = document.createElement("span");
      name.className = "unit-name";
      name.textContent = unit.name;
      line.appendChild(name);
      const scale = Math.max(...unit.values, 0);
      result.tokens.forEach((token, i) => {
        const piece = document.createElement("span");
        piece.className = `token ${shade(unit.values[i], scale)}`;
        piece.textContent = token;
        piece.title = unit.values[i].toFixed(3);
        line.appendChild(piece);
      });
      rows.appendChild(line);
    });
  }
  function drawLens(result) {
    const columns = result.tokens.map((t, i) => `${i} ${t}`);
    Plotly.newPlot("lens", [{type: "heatmap", z: result.lens.probs, x: columns, y: result.lens.labels,
      text: result.lens.tokens, texttemplate: "%{text}", colorscale: "Blues", reversescale: true, zmin: 0, zmax: 1,
      hovertemplate: "%{y} at %{x}: %{text} (p=%{z:.3f})<extra></extra>"}],
      {height: 160 + 18 * result.lens.labels.length, margin: {l: 60, t: 20},
       xaxis: {tickangle: -45}}, {displaylogo: false, responsive: true});
  }
  function drawHead() {
    if (!patterns) return;
    const head = Number(headPick.value || 0);
    const labels = patterns.tokens.map((t, i) => `${i} ${t}`);
    Plotly.newPlot("attention", [{type: "heatmap", z: patterns.patterns[head], x: labels, y: labels,
      colorscale: "Viridis", zmin: 0, zmax: 1, hovertemplate: "query %{y}, key %{x}: %{z:.3f}<extra></extra>"}],
      {height: 520, yaxis: {autorange: "reversed", title: "query"}, xaxis: {title: "key", tickangle: -45},
       title: `layer ${patterns.layer}, head ${head}`}, {displaylogo: false, responsive: true});
    document.getElementById("attention").dataset.head = String(head);
  }
  async function loadLayer() {
    if (!current) return;
    patterns = await post("/api/attention", {prompt: current.prompt, layer: Number(layerPick.value)});
    drawHead();
  }
  layerPick.addEventListener("change", () => loadLayer().catch(e => { status.textContent = e.message; }));
  headPick.addEventListener("change", drawHead);
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const field = name => form.elements[name].value;
    const body = {prompt: field("prompt"), latents: list(field("latents")).map(Number), neurons: list(field("neurons"))};
    if (field("sae_run")) body.sae_run = Number(field("sae_run"));
    status.textContent = "running…";
    form.dataset.state = "running";
    try {
      const result = await post("/api/prompt", body);
      current = {prompt: body.prompt, result: result};
      drawUnits(result);
      drawLens(result);
      layerPick.replaceChildren(...Array.from({length: result.n_layers}, (_, i) => new Option(String(i), String(i))));
      headPick.replaceChildren(...Array.from({length: result.n_heads}, (_, i) => new Option(String(i), String(i))));
      await loadLayer();
      status.textContent = `${result.tokens.length} tokens`;
      form.dataset.state = "done";
    } catch (error) {
      status.textContent = `refused: ${error.message}`;
      form.dataset.state = "error";
    }
  });
})();
