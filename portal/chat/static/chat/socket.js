/*
 * The page's websocket: JSON messages in and out, reconnecting with backoff.
 * A close with code 4401 means "not logged in": no reconnect, the page says so.
 */
(function (global) {
  "use strict";

  function ChatSocket(handlers, onStatus) {
    this.handlers = handlers;
    this.onStatus = onStatus || function () {};
    this.delay = 500;
    this.ws = null;
    this.connect();
  }

  ChatSocket.prototype.connect = function () {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/ws/chat/");
    const self = this;
    this.ws = ws;
    ws.onopen = function () { self.delay = 500; self.onStatus("online"); };
    ws.onmessage = function (event) {
      const message = JSON.parse(event.data);
      const handler = self.handlers[message.type];
      if (handler) handler(message);
    };
    ws.onclose = function (event) {
      if (event.code === 4401) { self.onStatus("refused"); return; }
      self.onStatus("offline");
      if (self.handlers.closed) self.handlers.closed();
      setTimeout(function () { self.connect(); }, self.delay);
      self.delay = Math.min(self.delay * 2, 8000);
    };
  };

  ChatSocket.prototype.send = function (message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  };

  function showStatus(state) {
    const dot = document.getElementById("conn-dot");
    const text = document.getElementById("conn-text");
    if (!dot || !text) return;
    dot.classList.toggle("online", state === "online");
    text.textContent = { online: "Connected", offline: "Reconnecting…", refused: "Log in to chat" }[state] || state;
  }

  function fillModels(select, models, preferred) {
    const previous = preferred || select.value;
    select.textContent = "";
    if (!models.length) {
      const option = new Option("No model has an online worker", "");
      select.add(option);
      return;
    }
    models.forEach(function (name) { select.add(new Option(name, name)); });
    if (previous && models.indexOf(previous) !== -1) select.value = previous;
  }

  // A figure the server sent, as a finite number, or null: upstreams choose these values,
  // so a string such as "<img onerror=…>" or "1e999" is dropped, never shown.
  function finiteNumber(value) {
    if (typeof value === "string" && value.trim() !== "" && isFinite(value)) value = Number(value);
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function addFigure(container, text, className, title) {
    const span = document.createElement("span");
    span.textContent = text;
    if (className) span.className = className;
    if (title) span.title = title;
    container.appendChild(span);
  }

  // The figures under an answer, built as text nodes (never HTML) from the message `f`.
  function renderFigures(container, f) {
    container.replaceChildren();
    if (!f) return;
    const tokens = finiteNumber(f.completion_tokens);
    const ttft = finiteNumber(f.time_to_first_token_ms);
    const speed = finiteNumber(f.tokens_per_second);
    if (f.status === "stopped") addFigure(container, "Stopped", "stopped");
    if (tokens !== null && tokens >= 0) addFigure(container, Math.round(tokens) + " tokens");
    if (ttft !== null && ttft >= 0) addFigure(container, "TTFT " + Math.round(ttft) + " ms");
    if (speed !== null && speed >= 0) addFigure(container, speed.toFixed(1) + " tok/s");
    if (f.model_name) addFigure(container, String(f.model_name));
    if (f.worker_identity) addFigure(container, String(f.worker_identity), "", "Worker");
  }

  function autoGrow(textarea) {
    textarea.addEventListener("input", function () {
      textarea.style.height = "auto";
      textarea.style.height = Math.min(textarea.scrollHeight, 200) + "px";
    });
  }

  // Copy buttons inside rendered code blocks.
  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest(".copy-code");
    if (!button) return;
    const code = button.closest(".code-block").querySelector("code").textContent;
    if (navigator.clipboard) navigator.clipboard.writeText(code);
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = "Copy"; }, 1200);
  });

  global.ChatSocket = ChatSocket;
  global.ChatUi = {
    showStatus: showStatus, fillModels: fillModels, renderFigures: renderFigures, finiteNumber: finiteNumber, autoGrow: autoGrow,
  };
})(window);
