/*
 * The arena: one prompt, two models streaming side by side, a vote, then the reveal.
 * What the server relays comes from upstreams: it is inserted as text, and as HTML
 * only through SafeMarkdown.render, which escapes every character first.
 */
(function () {
  "use strict";
  const $ = function (id) { return document.getElementById(id); };
  const md = window.SafeMarkdown;
  const ui = window.ChatUi;
  const state = { battleId: null, anonymous: true, running: false, text: { a: "", b: "" }, done: {}, models: [] };

  function isSide(side) { return side === "a" || side === "b"; }

  function mode() { return document.querySelector("input[name=mode]:checked").value; }

  function applyMode() {
    const named = mode() === "named";
    ["model-a", "model-b"].forEach(function (id) {
      $(id).disabled = !named;
      $(id).parentElement.hidden = !named;  // anonymous battles pick both models at random
    });
  }

  function reset() {
    ["a", "b"].forEach(function (side) {
      state.text[side] = "";
      $("answer-" + side).replaceChildren();
      $("figures-" + side).replaceChildren();
      $("name-" + side).textContent = "…";
      $("side-" + side).classList.remove("winner");
    });
    state.done = {};
    $("reveal").textContent = "";
    $("vote-bar").classList.remove("open");
  }

  function setRunning(running) {
    state.running = running;
    $("send").hidden = running;
    $("stop").hidden = !running;
  }

  // Before any battle, in plain sight: a battle needs two chat models.
  function showNeeds() {
    const count = state.models.length;
    $("arena-needs").hidden = count >= 2;
    $("send").disabled = count < 2;
    $("arena-needs-count").textContent = count === 0
      ? "This portal serves none right now."
      : "This portal serves one: " + state.models[0] + ".";
  }

  function battle(prompt) {
    if (!prompt.trim() || state.running || state.models.length < 2) return;
    reset();
    const named = mode() === "named";
    const ok = socket.send({
      type: "arena.send", prompt: prompt, anonymous: !named,
      model_a: named ? $("model-a").value : "", model_b: named ? $("model-b").value : "",
      // The chat page's sampling settings, so that both answers are as good as they are there.
      params: { temperature: $("temperature").value, top_p: $("top-p").value, max_tokens: $("max-tokens").value },
    });
    if (!ok) { $("reveal").textContent = "Not connected to the server."; return; }
    setRunning(true);
    // On a phone the open settings would leave the answers a sliver of the screen: fold them away.
    if (window.matchMedia("(max-width: 600px)").matches && $("settings").classList.contains("open")) {
      $("toggle-settings").click();
    }
  }

  function sideError(side, message) {
    const box = document.createElement("div");
    box.className = "error-box";
    box.textContent = message;
    $("answer-" + side).appendChild(box);
  }

  const socket = new window.ChatSocket({
    "models.list": function (m) {
      state.models = m.models;
      ui.fillModels($("model-a"), m.models);
      ui.fillModels($("model-b"), m.models);
      if (m.models.length > 1 && $("model-a").value === $("model-b").value) $("model-b").value = m.models[1];
      showNeeds();
    },
    "arena.started": function (m) {
      state.battleId = m.battle_id;
      state.anonymous = m.anonymous;
      $("name-a").textContent = String(m.model_a || "hidden");
      $("name-b").textContent = String(m.model_b || "hidden");
    },
    "arena.token": function (m) {
      if (!isSide(m.side)) return;
      state.text[m.side] += String(m.text || "");
      $("answer-" + m.side).innerHTML = md.render(state.text[m.side]);
    },
    "arena.done": function (m) {
      if (!isSide(m.side)) return;
      ui.renderFigures($("figures-" + m.side), m);
      if (m.status === "error") sideError(m.side, String(m.error || "This side failed."));
    },
    "arena.finished": function () {
      setRunning(false);
      $("vote-bar").classList.add("open");
      $("reveal").textContent = state.anonymous ? "Which answer is better? The names are revealed after your vote." : "Which answer is better?";
    },
    "arena.revealed": function (m) {
      $("vote-bar").classList.remove("open");
      $("name-a").textContent = m.model_a;
      $("name-b").textContent = m.model_b;
      if (isSide(m.choice)) $("side-" + m.choice).classList.add("winner");
      $("reveal").textContent = "Vote recorded: A was " + m.model_a + ", B was " + m.model_b + ".";
    },
    "arena.error": function (m) {
      setRunning(false);
      $("reveal").textContent = m.message;
    },
    closed: function () { if (state.running) { setRunning(false); $("reveal").textContent = "The connection dropped."; } },
  }, ui.showStatus);

  document.querySelectorAll("input[name=mode]").forEach(function (r) { r.addEventListener("change", applyMode); });
  $("vote-bar").addEventListener("click", function (event) {
    const choice = event.target.dataset && event.target.dataset.choice;
    if (choice && state.battleId) socket.send({ type: "arena.vote", battle_id: state.battleId, choice: choice });
  });
  $("composer").addEventListener("submit", function (event) { event.preventDefault(); battle($("prompt").value); });
  $("prompt").addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); battle($("prompt").value); }
  });
  ui.autoGrow($("prompt"));
  $("toggle-settings").addEventListener("click", function () {
    const open = $("settings").classList.toggle("open");
    $("toggle-settings").setAttribute("aria-expanded", String(open));
  });
  $("stop").addEventListener("click", function () { socket.send({ type: "arena.stop" }); });
  applyMode();
})();
