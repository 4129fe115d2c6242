// Steering playground: post the form, read the NDJSON stream, grow both texts as tokens arrive.
"use strict";
(function () {
  const form = document.getElementById("steer-form");
  const status = document.getElementById("steer-status");
  const panes = {unsteered: document.getElementById("unsteered"), steered: document.getElementById("steered")};
  function number(value) { return value === "" ? null : Number(value); }
  function request() {
    const field = name => form.elements[name].value;
    const body = {prompt: field("prompt"), source: form.elements.source.value, strength: Number(field("strength")),
                  max_new_tokens: Number(field("max_new_tokens")), layer: number(field("layer"))};
    if (body.source === "contrast") { body.positive = field("positive"); body.negative = field("negative"); }
    if (body.source === "feature") { body.sae_run = number(field("sae_run")); body.latent = number(field("latent")); }
    if (body.source === "file") {
      const [run, artifact] = field("saved").split(":");
      body.direction_run = number(run || ""); body.direction_artifact = number(artifact || "");
    }
    return body;
  }
  function problem(detail) {
    if (Array.isArray(detail)) return detail.map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return String(detail);
  }
  form.addEventListener("submit", async event => {
    event.preventDefault();
    panes.unsteered.textContent = ""; panes.steered.textContent = "";
    form.dataset.state = "running";
    status.textContent = "waiting for the model…";
    const response = await fetch("/api/steer", {method: "POST", headers: {"Content-Type": "application/json"},
                                                body: JSON.stringify(request())});
    if (!response.ok) {
      const answer = await response.json().catch(() => ({detail: response.statusText}));
      status.textContent = `refused: ${problem(answer.detail)}`;
      form.dataset.state = "error";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, {stream: true});
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const item = JSON.parse(line);
        if (item.direction) {
          status.textContent = `steering before block ${item.direction.layer} (${item.direction.method} direction, ` +
            `natural scale ${item.direction.scale.toPrecision(3)})`;
        }
        if (item.unsteered !== undefined) { panes.unsteered.textContent += item.unsteered; panes.steered.textContent += item.steered; }
        if (item.error) { status.textContent = `error: ${item.error}`; form.dataset.state = "error"; }
        if (item.done && form.dataset.state !== "error") form.dataset.state = "done";
      }
    }
  });
})();
