// The usage page's charts: Chart.js (served from the project) draws the JSON the server rendered.
// Amounts arrive as integer micro-credits; only axis labels and tooltips divide them for display.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var palette = ["#0b5cad", "#d1570f", "#116329", "#6639ba", "#a40e26", "#0a7b83", "#8a6100", "#57606a", "#b3246c"];
  var credits = function (micros) { return "$" + (micros / 1e6).toFixed(micros !== 0 && Math.abs(micros) < 1e4 ? 6 : 2); };
  var moneyAxis = { ticks: { callback: function (value) { return credits(value); } } };
  var tooltip = { callbacks: { label: function (item) { return (item.dataset.label || item.label) + ": " + credits(item.raw); } } };
  var reduced = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  Chart.defaults.animation = reduced ? false : { duration: 300 };
  Chart.defaults.maintainAspectRatio = false;

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (canvas) { new Chart(canvas, config); }
  }

  draw("chart-balance", {
    type: "line",
    data: { labels: data.balance.labels, datasets: [{ label: "Balance", data: data.balance.micros, borderColor: palette[0], backgroundColor: "rgba(11,92,173,.12)", fill: true, tension: 0.2, pointRadius: 2 }] },
    options: { scales: { y: moneyAxis }, plugins: { legend: { display: false }, tooltip: tooltip } }
  });
  draw("chart-spend-day", {
    type: "bar",
    data: {
      labels: data.spend_by_day.labels,
      datasets: data.spend_by_day.models.map(function (model, i) {
        return { label: model, data: data.spend_by_day.micros[i], backgroundColor: palette[i % palette.length] };
      })
    },
    options: { scales: { x: { stacked: true }, y: Object.assign({ stacked: true }, moneyAxis) }, plugins: { tooltip: tooltip } }
  });
  draw("chart-spend-model", {
    type: "doughnut",
    data: { labels: data.spend_by_model.labels, datasets: [{ label: "Spend", data: data.spend_by_model.micros, backgroundColor: palette }] },
    options: { plugins: { tooltip: tooltip, legend: { position: "bottom" } } }
  });
})();
