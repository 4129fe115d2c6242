// Plotly figures carried in the page's data, one per <div class="figure" data-figure="i">.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  document.querySelectorAll("div.figure").forEach(div => {
    const figure = data.figures[Number(div.dataset.figure)];
    // Sized by the figure, else a height that fits a layer-by-head grid (the container has none).
    figure.layout.height = figure.layout.height || 520;
    Plotly.newPlot(div, figure.data, figure.layout, {responsive: true, displaylogo: false});
  });
})();
