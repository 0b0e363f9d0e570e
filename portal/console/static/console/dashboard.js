// The fleet dashboard: a websocket pushes snapshots; when it fails, the page polls the JSON.
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("fleet-config").textContent);
  const state = document.getElementById("fleet-connection");
  const POLL_MS = 5000;
  const RECONNECT_MS = 10000;
  let pollTimer = null;

  function cell(row, value, className) {
    const td = row.insertCell();
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    if (className) td.className = className;
    return td;
  }
  function link(text, href) {
    const a = document.createElement("a");
    a.textContent = text;
    a.href = href;
    return a;
  }
  const dash = (value, suffix = "") => (value === null || value === undefined ? "—" : value + suffix);
  const mebibytes = (value) => (value === null || value === undefined ? "—" : Math.round(value / 1048576) + " MiB");
  const percent = (value) => (value === null || value === undefined ? "—" : Math.round(value * 100) + "%");

  function timings(row, figures) {
    cell(row, dash(figures.ttft_p50_ms, " ms"), "number");
    cell(row, dash(figures.ttft_p95_ms, " ms"), "number");
    cell(row, dash(figures.itl_p50_ms, " ms"), "number");
    cell(row, dash(figures.itl_p95_ms, " ms"), "number");
  }

  // Server failures are the error rate; the client's errors, limit refusals and cancels are shown apart.
  function apart(o) {
    return o.client_error + " · " + o.limited + " · " + o.cancelled;
  }

  function renderModels(models) {
    const body = document.querySelector("#fleet-models tbody");
    body.replaceChildren();
    for (const m of models) {
      const row = body.insertRow();
      row.dataset.model = m.name;
      cell(row, link(m.name + (m.enabled ? "" : " (disabled)"), config.modelAdmin + "?q=" + encodeURIComponent(m.name)));
      cell(row, m.task);
      cell(row, m.online_replicas, "number");
      cell(row, m.requests_per_minute, "number");
      timings(row, m);
      cell(row, dash(m.latency_p50_ms, " ms"), "number");
      cell(row, dash(m.latency_p95_ms, " ms"), "number");
      cell(row, percent(m.error_rate), "number fleet-error-rate");
      cell(row, apart(m.outcomes), "number fleet-apart");
      cell(row, percent(m.prefix_cache_hit_rate), "number");
      const roles = Object.keys(m.by_role);
      if (roles.includes("decode")) {
        for (const role of roles) {
          const line = body.insertRow();
          line.dataset.model = m.name;
          line.dataset.role = role;
          cell(line, "  " + m.name + " · " + role, "fleet-role");
          for (let i = 0; i < 3; i++) cell(line, "");
          timings(line, m.by_role[role]);
          for (let i = 0; i < 5; i++) cell(line, "");
        }
      }
    }
    renderTrends(models);
  }

  // Each model's last hour, a minute a point: two small charts, made once and then fed new points.
  const trends = new Map();
  const MINUTE_LABELS = Array.from({ length: 60 }, (_, i) => (i === 59 ? "now" : 59 - i + " min ago"));

  function sparkline(canvas, type, label, color) {
    return new Chart(canvas, {
      type: type,
      data: { labels: MINUTE_LABELS, datasets: [{ label: label, data: [], backgroundColor: color, borderColor: color, pointRadius: type === "line" ? 1.5 : 0, borderWidth: 1.5, spanGaps: false }] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { x: { display: false }, y: { beginAtZero: true, ticks: { maxTicksLimit: 3 } } },
        plugins: { legend: { display: false } },
      },
    });
  }

  function trendCard(name) {
    const card = document.createElement("div");
    card.className = "fleet-trend";
    card.dataset.model = name;
    const title = document.createElement("h3");
    title.textContent = name;
    card.appendChild(title);
    const charts = {};
    for (const [key, label, type, color] of [["requests", "Requests/min", "bar", "#417690"], ["ttft_p50_ms", "TTFT p50 (ms)", "line", "#e8a33d"]]) {
      const caption = document.createElement("p");
      caption.className = "fleet-trend-label";
      caption.textContent = label;
      const box = document.createElement("div");
      box.className = "fleet-trend-chart";
      const canvas = document.createElement("canvas");
      canvas.dataset.series = key;
      box.appendChild(canvas);
      card.append(caption, box);
      charts[key] = canvas;
    }
    const idle = document.createElement("p");
    idle.className = "fleet-trend-idle";
    idle.textContent = "No requests in the last hour.";
    card.appendChild(idle);
    document.getElementById("fleet-trends").appendChild(card);
    if (typeof Chart === "undefined") return { card: card };
    return {
      card: card,
      requests: sparkline(charts.requests, "bar", "Requests/min", "#417690"),
      ttft_p50_ms: sparkline(charts.ttft_p50_ms, "line", "TTFT p50 (ms)", "#e8a33d"),
    };
  }

  function renderTrends(models) {
    const names = new Set(models.map((m) => m.name));
    for (const [name, entry] of trends) {
      if (!names.has(name)) {
        entry.card.remove();
        trends.delete(name);
      }
    }
    for (const m of models) {
      if (!trends.has(m.name)) trends.set(m.name, trendCard(m.name));
      const entry = trends.get(m.name);
      const total = m.last_hour.requests.reduce((a, b) => a + b, 0);
      entry.card.dataset.requests = total;
      entry.card.classList.toggle("idle", total === 0);  // no bare axes: say there is nothing yet
      for (const key of ["requests", "ttft_p50_ms"]) {
        if (!entry[key]) continue;
        entry[key].data.datasets[0].data = m.last_hour[key];
        entry[key].update("none");
      }
    }
  }

  function renderDeployments(deployments) {
    const body = document.querySelector("#fleet-deployments tbody");
    const replicas = document.querySelector("#fleet-instances tbody");
    body.replaceChildren();
    replicas.replaceChildren();
    for (const d of deployments) {
      const row = body.insertRow();
      row.dataset.deployment = d.name;
      cell(row, link(d.name, config.deploymentAdmin + d.id + "/change/"));
      cell(row, d.model_path);
      cell(row, d.ready + " / " + d.desired, "number");
      cell(row, d.starting, "number");
      cell(row, d.failed, "number");
      cell(row, d.stopping, "number");
      cell(row, d.pending_reason || "—");
      for (const i of d.instances) {
        const line = replicas.insertRow();
        line.dataset.instance = i.identity;
        cell(line, i.identity);
        cell(line, i.node);
        cell(line, i.state, "fleet-state-" + i.state);
        cell(line, dash(i.port), "number");
        cell(line, i.restarts, "number");
        cell(line, i.detail || "—");
      }
    }
  }

  function renderEvents(deployments, events) {
    const body = document.querySelector("#fleet-events tbody");
    body.replaceChildren();
    for (const d of deployments) {
      for (const e of events[d.id] || []) {
        const row = body.insertRow();
        row.dataset.deployment = d.name;
        cell(row, d.name);
        cell(row, new Date(e.at).toLocaleTimeString());
        cell(row, e.action);
        cell(row, e.replicas_before + " → " + e.replicas_after, "number");
        cell(row, e.reason);
      }
    }
  }

  function renderWorkers(workers) {
    const body = document.querySelector("#fleet-workers tbody");
    body.replaceChildren();
    for (const w of workers) {
      const row = body.insertRow();
      row.dataset.worker = w.identity;
      cell(row, link(w.identity, config.workerAdmin + w.id + "/change/"));
      const status = w.intent === "serve" ? w.status : w.status + " (" + w.intent + ")";
      cell(row, status, "fleet-status-" + w.status);
      cell(row, w.role);
      cell(row, w.backend || w.kind);
      cell(row, w.models.join(", "));
      cell(row, w.address);
      cell(row, dash(w.heartbeat_age, " s"), "number");
      cell(row, w.in_flight + " / " + w.max_concurrency, "number");
      cell(row, w.queued, "number");
      cell(row, w.tokens_per_second, "number");
      cell(row, percent(w.kv_cache_usage), "number");
      cell(row, percent(w.prefix_cache_hit_rate), "number");
      cell(row, mebibytes(w.memory_bytes), "number");
    }
  }

  // Used against a budget: "1200 / 5000 (24%)"; without a budget, the figure alone.
  function against(used, budget, share, prefix = "") {
    if (budget === null || budget === undefined) return prefix + used;
    return prefix + used + " / " + prefix + budget + " (" + percent(share) + ")";
  }

  function renderTeams(teams) {
    const body = document.querySelector("#fleet-teams tbody");
    body.replaceChildren();
    for (const t of teams || []) {
      const row = body.insertRow();
      row.dataset.team = t.name;
      cell(row, link(t.name, config.usage + "?team=" + encodeURIComponent("#" + t.id)));
      cell(row, t.requests_today, "number");
      const over = (share) => (share !== null && share >= 1 ? " fleet-over-budget" : "");
      cell(row, against(t.tokens_today, t.daily_tokens, t.daily_tokens_used), "number" + over(t.daily_tokens_used));
      cell(row, t.requests_month, "number");
      cell(row, against(t.tokens_month, t.monthly_tokens, t.monthly_tokens_used), "number" + over(t.monthly_tokens_used));
      cell(row, against(t.spend_month_usd.toFixed(2), t.monthly_budget_usd === null ? null : t.monthly_budget_usd.toFixed(2), t.monthly_budget_used, "$"), "number" + over(t.monthly_budget_used));
      cell(row, t.request_log_days === null ? "off" : "⚠ on, " + t.request_log_days + " day(s)");
    }
  }

  function render(snapshot) {
    renderTeams(snapshot.teams);
    renderDeployments(snapshot.deployments);
    renderEvents(snapshot.deployments, snapshot.deployment_events || {});
    renderModels(snapshot.models);
    renderWorkers(snapshot.workers);
    document.body.dataset.fleetAt = snapshot.at;
  }

  function poll() {
    fetch(config.json, { credentials: "same-origin" })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then(render)
      .catch(() => {});
  }

  function startPolling() {
    if (pollTimer === null) {
      state.dataset.state = "polling";
      state.textContent = "Live updates unavailable: refreshing every " + POLL_MS / 1000 + " s.";
      pollTimer = setInterval(poll, POLL_MS);
      poll();
    }
  }

  function stopPolling() {
    if (pollTimer !== null) {
      clearInterval(pollTimer);
      pollTimer = null;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + config.socket);
    socket.onopen = () => {
      stopPolling();
      state.dataset.state = "live";
      state.textContent = "Live.";
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "fleet.snapshot") render(message);
    };
    socket.onclose = () => {
      startPolling();
      setTimeout(connect, RECONNECT_MS);
    };
  }

  render(JSON.parse(document.getElementById("fleet-snapshot").textContent));
  if ("WebSocket" in window) connect(); else startPolling();
})();
