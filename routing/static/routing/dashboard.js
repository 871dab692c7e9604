/* The operator dashboard's charts, drawn with the vendored Chart.js from the JSON the page carries
   (#dashboard-data). Each canvas gets data-rendered="true" once drawn. */
(function () {
  "use strict";
  var source = document.getElementById("dashboard-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var LOCAL = "#2c7fb8", PREMIUM = "#d95f0e", P95 = "#7fbc41";
  var PALETTE = ["#2c7fb8", "#d95f0e", "#7fbc41", "#984ea3", "#e7298a", "#666666", "#a6761d", "#1b9e77"];
  Chart.defaults.animation = false;

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    new Chart(canvas, config);
    canvas.setAttribute("data-rendered", "true");
  }

  function stacked(label, local, premium, money) {
    return {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [
          {label: "local", data: local, backgroundColor: LOCAL, stack: "s"},
          {label: "premium", data: premium, backgroundColor: PREMIUM, stack: "s"}
        ]
      },
      options: {
        responsive: true, maintainAspectRatio: false,
        scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true, title: {display: true, text: label},
          ticks: money ? {callback: function (v) { return data.currency + v; }} : {}}}
      }
    };
  }

  draw("chart-requests", stacked("requests", data.local_requests, data.premium_requests, false));
  draw("chart-cost", stacked("cost (" + data.currency + ")", data.local_cost, data.premium_cost, true));
  draw("chart-latency", {
    type: "bar",
    data: {
      labels: data.latency.models,
      datasets: [
        {label: "p50", data: data.latency.p50, backgroundColor: LOCAL},
        {label: "p95", data: data.latency.p95, backgroundColor: P95}
      ]
    },
    options: {responsive: true, maintainAspectRatio: false, scales: {y: {beginAtZero: true, title: {display: true, text: "ms"}}}}
  });
  draw("chart-thresholds", {
    type: "line",
    data: {
      datasets: data.thresholds.map(function (line, i) {
        return {label: line.label, data: line.points, stepped: "before", borderColor: PALETTE[i % PALETTE.length],
                backgroundColor: PALETTE[i % PALETTE.length], pointRadius: 3};
      })
    },
    options: {
      responsive: true, maintainAspectRatio: false, parsing: true,
      scales: {
        x: {type: "linear", ticks: {callback: function (v) { return new Date(v).toISOString().slice(5, 16).replace("T", " "); }}},
        y: {min: 0, max: 1, title: {display: true, text: "confidence floor"}}
      }
    }
  });
})();
