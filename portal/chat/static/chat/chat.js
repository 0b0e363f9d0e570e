/*
 * The chat page: one conversation, streamed answers, stop and retry, sidebar actions.
 * What the server relays comes from upstreams: it is inserted as text, and as HTML
 * only through SafeMarkdown.render, which escapes every character first. JSON answers
 * (the "Answer format" setting) are inserted as text only: Markdown would mangle them.
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

  function showAnswer(bubble, text, asJson) {
    if (!asJson) { bubble.innerHTML = md.render(text); return; }
    const pre = element("pre", "json");
    pre.textContent = text;
    bubble.replaceChildren(pre);
  }

  function finishAnswer(wrap, message) {
    wrap.classList.remove("streaming");
    if (message.content) showAnswer(wrap.querySelector(".bubble"), message.content, message.answer_format === "json");
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
    const format = p.response_format;
    if (format && ["text", "json_object", "json_schema"].indexOf(format.type) !== -1) {
      $("answer-format").value = format.type;
      const schema = format.json_schema && format.json_schema.schema;
      if (schema != null) $("json-schema").value = typeof schema === "string" ? schema : JSON.stringify(schema, null, 2);
    }
    current.messages.forEach(function (m) {
      const wrap = addMessage(m.role);
      if (m.role === "user") wrap.querySelector(".bubble").textContent = m.content;
      else finishAnswer(wrap, m);
    });
  }

  function setStreaming(wrap, asJson) {
    state.streaming = wrap ? { wrap: wrap, text: "", frame: 0, json: !!asJson } : null;
    $("send").hidden = !!wrap;
    $("stop").hidden = !wrap;
  }

  function showFormat() { $("schema-field").hidden = $("answer-format").value !== "json_schema"; }

  // OpenAI's response_format; the schema goes as the textarea's text, which the server parses.
  function responseFormat() {
    const kind = $("answer-format").value;
    if (kind === "json_object") return { type: "json_object" };
    if (kind === "json_schema") return { type: "json_schema", json_schema: { name: "answer", schema: $("json-schema").value, strict: true } };
    return null;
  }

  function settings() {
    const params = { temperature: $("temperature").value, top_p: $("top-p").value, max_tokens: $("max-tokens").value };
    const format = responseFormat();
    if (format) params.response_format = format;
    return { model: $("model").value, system_prompt: $("system-prompt").value, params: params };
  }

  function begin(type, extra) {
    const wrap = addMessage("assistant");
    wrap.classList.add("streaming");
    const message = Object.assign({ type: type, conversation_id: state.conversationId }, settings(), extra);
    if (!message.model) { wrap.classList.remove("streaming"); showError(wrap, "Pick a model with an online worker first.", false); return; }
    setStreaming(wrap, !!message.params.response_format);
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
        showAnswer(s.wrap.querySelector(".bubble"), s.text, s.json);
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
      s.wrap.querySelector(".bubble").hidden = !s.text;  // a refused request has no answer to show
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
  // Phone width: the conversation list slides over the page, opened and closed from the toolbar.
  function showSidebar(open) {
    $("layout").classList.toggle("sidebar-open", open);
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  }
  $("toggle-sidebar").addEventListener("click", function (event) {
    event.stopPropagation();
    showSidebar(!$("layout").classList.contains("sidebar-open"));
  });
  document.querySelector(".main").addEventListener("click", function () {
    if ($("layout").classList.contains("sidebar-open")) showSidebar(false);  // a tap beside the list closes it
  });
  $("answer-format").addEventListener("change", showFormat);
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
  showFormat();
})();
