// The usage page's charts, drawn by the vendored Chart.js from the page's #usage-chart-data.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("usage-chart-data").textContent);
  const palette = [
    "#417690", "#e8a33d", "#5b9c5b", "#c2504d", "#8064a2", "#4bacc6", "#9b7b52", "#d65db1", "#7f7f7f",
  ];
  const style = getComputedStyle(document.documentElement);
  Chart.defaults.color = style.getPropertyValue("--body-quiet-color").trim() || "#666";
  Chart.defaults.borderColor = style.getPropertyValue("--hairline-color").trim() || "#e5e5e5";
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  // A chart with nothing to draw says so, rather than showing bare axes.
  function nothing(canvas) {
    const note = document.createElement("p");
    note.className = "usage-empty";
    note.textContent = "No data in this range";
    canvas.hidden = true;
    canvas.parentElement.appendChild(note);
  }

  function total(values) {
    return values.reduce(function (sum, value) { return sum + (Number(value) || 0); }, 0);
  }

  function stacked(id, series) {
    if (!series.some(function (s) { return total(s.data) > 0; })) {
      nothing(document.getElementById(id));
      return;
    }
    new Chart(document.getElementById(id), {
      type: "bar",
      data: {
        labels: data.daily.days,
        datasets: series.map(function (s, i) {
          return { label: s.label, data: s.data, backgroundColor: palette[i % palette.length] };
        }),
      },
      options: {
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function ranking(name) {
    const top = data.top[name];
    if (total(top.values) === 0) {
      nothing(document.getElementById("chart-top-" + name));
      return;
    }
    new Chart(document.getElementById("chart-top-" + name), {
      type: "bar",
      data: {
        labels: top.labels,
        datasets: [{ label: data.rank, data: top.values, backgroundColor: palette[0] }],
      },
      options: { indexAxis: "y", scales: { x: { beginAtZero: true } }, plugins: { legend: { display: false } } },
    });
  }

  stacked("chart-requests-per-day", data.daily.requests);
  stacked("chart-tokens-per-day", data.daily.tokens);
  Object.keys(data.top).forEach(ranking);
})();
