/*
 * The chat page: one conversation, streamed answers, stop and retry, sidebar actions.
 * What the server relays comes from upstreams: it is inserted as text, and as HTML
 * only through SafeMarkdown.render, which escapes every character first.
 */
(function () {
  "use strict";
  const $ = function (id) { return document.getElementById(id); };
  const md = window.SafeMarkdown;
  const ui = window.ChatUi;
  const current = JSON.parse($("current-conversation").textContent);
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;
  const state = { conversationId: current ? current.id : null, streaming: null, lastModel: current ? current.model_name : "" };

  function scrollDown() { const t = $("thread"); t.scrollTop = t.scrollHeight; }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function addMessage(role) {
    $("welcome").hidden = true;
    const wrap = element("div", "msg " + (role === "user" ? "user" : "assistant"));
    wrap.append(element("div", "who", role === "user" ? "You" : "Assistant"), element("div", "bubble"), element("div", "figures"));
    $("messages").appendChild(wrap);
    scrollDown();
    return wrap;
  }

  function showError(wrap, message, retryable) {
    let box = wrap.querySelector(".error-box");
    if (!box) { box = document.createElement("div"); box.className = "error-box"; wrap.appendChild(box); }
    box.textContent = String(message);
    if (retryable) {
      const button = document.createElement("button");
      button.type = "button"; button.className = "btn btn-small retry"; button.textContent = "Retry";
      button.addEventListener("click", function () { retry(wrap); });
      box.appendChild(button);
    }
    scrollDown();
  }

  function finishAnswer(wrap, message) {
    wrap.classList.remove("streaming");
    if (message.content) wrap.querySelector(".bubble").innerHTML = md.render(message.content);
    else if (message.status === "error") wrap.querySelector(".bubble").hidden = true;
    ui.renderFigures(wrap.querySelector(".figures"), message);
    if (message.status === "error") showError(wrap, message.error || "The answer failed.", message.retryable !== false);
  }

  function renderHistory() {
    if (!current) return;
    $("system-prompt").value = current.system_prompt || "";
    const p = current.params || {};
    if (p.temperature != null) $("temperature").value = p.temperature;
    if (p.top_p != null) $("top-p").value = p.top_p;
    if (p.max_tokens != null) $("max-tokens").value = p.max_tokens;
    current.messages.forEach(function (m) {
      const wrap = addMessage(m.role);
      if (m.role === "user") wrap.querySelector(".bubble").textContent = m.content;
      else finishAnswer(wrap, m);
    });
  }

  function setStreaming(wrap) {
    state.streaming = wrap ? { wrap: wrap, text: "", frame: 0 } : null;
    $("send").hidden = !!wrap;
    $("stop").hidden = !wrap;
  }

  function settings() {
    return {
      model: $("model").value,
      system_prompt: $("system-prompt").value,
      params: { temperature: $("temperature").value, top_p: $("top-p").value, max_tokens: $("max-tokens").value },
    };
  }

  function begin(type, extra) {
    const wrap = addMessage("assistant");
    wrap.classList.add("streaming");
    const message = Object.assign({ type: type, conversation_id: state.conversationId }, settings(), extra);
    if (!message.model) { wrap.classList.remove("streaming"); showError(wrap, "Pick a model with an online worker first.", false); return; }
    setStreaming(wrap);
    if (!socket.send(message)) { setStreaming(null); wrap.classList.remove("streaming"); showError(wrap, "Not connected to the server.", true); }
  }

  function send(text) {
    if (!text.trim() || state.streaming) return;
    addMessage("user").querySelector(".bubble").textContent = text;
    $("prompt").value = ""; $("prompt").style.height = "auto";
    begin("chat.send", { content: text });
  }

  function retry(failedWrap) {
    if (state.streaming) return;
    failedWrap.remove();
    if (state.conversationId == null) return;
    begin("chat.retry", {});
  }

  function addToSidebar(id, title) {
    const list = $("conversations");
    const empty = list.querySelector(".empty");
    if (empty) empty.remove();
    list.querySelectorAll("li.active").forEach(function (li) { li.classList.remove("active"); });
    let li = list.querySelector('li[data-id="' + id + '"]');
    if (!li) {
      li = document.createElement("li");
      li.dataset.id = id;
      const actions = element("span", "actions");
      actions.append(element("button", "icon-btn rename", "Rename"), element("button", "icon-btn delete", "Delete"));
      actions.querySelectorAll("button").forEach(function (button) { button.type = "button"; });
      li.append(element("a"), actions);
      li.querySelector("a").href = "/chat/c/" + id + "/";
      li.querySelector("a").textContent = title;
      li.querySelector("a").title = title;
    }
    li.classList.add("active");
    list.prepend(li);
  }

  const socket = new window.ChatSocket({
    "models.list": function (m) { ui.fillModels($("model"), m.models, state.lastModel || localStorage.getItem("chat.model")); },
    "chat.started": function (m) {
      if (!Number.isInteger(m.conversation_id)) return;
      if (state.conversationId !== m.conversation_id) {
        state.conversationId = m.conversation_id;
        history.replaceState(null, "", "/chat/c/" + m.conversation_id + "/");
        document.title = m.title + " · Model portal";
      }
      addToSidebar(m.conversation_id, m.title);
    },
    "chat.token": function (m) {
      const s = state.streaming;
      if (!s) return;
      s.text += String(m.text || "");
      if (s.frame) return;
      // Re-render at most once per frame: Markdown of the whole answer so far.
      s.frame = requestAnimationFrame(function () {
        s.frame = 0;
        s.wrap.querySelector(".bubble").innerHTML = md.render(s.text);
        scrollDown();
      });
    },
    "chat.done": function (m) {
      const s = state.streaming;
      if (!s) return;
      if (s.frame) cancelAnimationFrame(s.frame);
      finishAnswer(s.wrap, m.message);
      setStreaming(null);
    },
    "chat.error": function (m) {
      const s = state.streaming;
      if (!s) return;
      s.wrap.classList.remove("streaming");
      showError(s.wrap, m.message, m.code === "busy");
      setStreaming(null);
    },
    closed: function () {
      const s = state.streaming;
      if (!s) return;
      s.wrap.classList.remove("streaming");
      showError(s.wrap, "The connection dropped; what was written so far is saved.", true);
      setStreaming(null);
    },
  }, ui.showStatus);

  $("composer").addEventListener("submit", function (event) { event.preventDefault(); send($("prompt").value); });
  $("prompt").addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send($("prompt").value); }
  });
  ui.autoGrow($("prompt"));
  $("stop").addEventListener("click", function () { socket.send({ type: "chat.stop" }); });
  $("toggle-settings").addEventListener("click", function () { $("settings").classList.toggle("open"); });
  $("model").addEventListener("change", function () { localStorage.setItem("chat.model", $("model").value); });

  function post(url, body) {
    return fetch(url, { method: "POST", headers: { "X-CSRFToken": csrf, "Content-Type": "application/json" }, body: JSON.stringify(body || {}) })
      .then(function (r) { return r.json().then(function (data) { if (!r.ok) throw new Error(data.error.message); return data; }); });
  }

  $("conversations").addEventListener("click", function (event) {
    const li = event.target.closest("li[data-id]");
    if (!li) return;
    const id = li.dataset.id;
    if (event.target.classList.contains("rename")) {
      const link = li.querySelector("a");
      const title = window.prompt("Rename conversation", link.textContent);
      if (title === null) return;
      post("/chat/api/conversations/" + id + "/rename/", { title: title })
        .then(function (data) { link.textContent = data.title; link.title = data.title; })
        .catch(function (e) { alert(e.message); });
    } else if (event.target.classList.contains("delete")) {
      if (!window.confirm("Delete this conversation?")) return;
      post("/chat/api/conversations/" + id + "/delete/")
        .then(function () { li.remove(); if (String(state.conversationId) === id) location.href = "/chat/"; })
        .catch(function (e) { alert(e.message); });
    }
  });

  renderHistory();
})();
