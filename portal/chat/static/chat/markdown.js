/*
 * A small, safe Markdown renderer for model output.
 *
 * Safety comes first: every character of the model's text is HTML-escaped
 * before any markup is built, and the only tags produced are the ones below
 * (p, h1-h4, ul/ol/li, blockquote, pre/code, strong, em, a, hr, table). Links
 * keep only http(s) targets and open with rel="noopener noreferrer nofollow".
 * So a model that writes <script> or <img onerror> shows it as text.
 * An unterminated ``` fence (mid-stream) renders as an open code block.
 */
(function (global) {
  "use strict";

  function escapeHtml(text) {
    return text
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Inline markup on already-escaped text; code spans are cut out first so
  // that emphasis never applies inside them.
  function inline(escaped) {
    const spans = [];
    let text = escaped.replace(/`([^`\n]+)`/g, function (_, code) {
      spans.push("<code>" + code + "</code>");
      return "\u0000" + (spans.length - 1) + "\u0000";
    });
    text = text
      .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/__([^_\n]+)__/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, function (_, label, url) {
        return '<a href="' + url + '" target="_blank" rel="noopener noreferrer nofollow">' + label + "</a>";
      });
    return text.replace(/\u0000(\d+)\u0000/g, function (_, i) { return spans[Number(i)]; });
  }

  function isTableRow(line) { return /^\s*\|.*\|\s*$/.test(line); }
  function cells(line) { return line.trim().replace(/^\||\|$/g, "").split("|").map(function (c) { return inline(c.trim()); }); }

  function table(lines) {
    const head = cells(lines[0]);
    const body = lines.slice(2).map(cells);
    return "<table><thead><tr>" + head.map(function (c) { return "<th>" + c + "</th>"; }).join("") +
      "</tr></thead><tbody>" + body.map(function (row) {
        return "<tr>" + row.map(function (c) { return "<td>" + c + "</td>"; }).join("") + "</tr>";
      }).join("") + "</tbody></table>";
  }

  function list(lines, ordered) {
    const tag = ordered ? "ol" : "ul";
    const marker = ordered ? /^\s*\d+[.)]\s+/ : /^\s*[-*+]\s+/;
    return "<" + tag + ">" + lines.map(function (l) { return "<li>" + inline(l.replace(marker, "")) + "</li>"; }).join("") + "</" + tag + ">";
  }

  // Block structure of escaped prose (no code fences in it).
  function blocks(escaped) {
    const lines = escaped.split("\n");
    const out = [];
    let i = 0;
    function run(test) {
      const start = i;
      while (i < lines.length && test(lines[i])) i++;
      return lines.slice(start, i);
    }
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) { i++; continue; }
      if ((m = /^(#{1,4})\s+(.*)$/.exec(line))) {
        out.push("<h" + m[1].length + ">" + inline(m[2]) + "</h" + m[1].length + ">"); i++; continue;
      }
      if (/^\s*([-*_])\s*\1\s*\1[\s\-*_]*$/.test(line)) { out.push("<hr>"); i++; continue; }
      if (/^\s*[-*+]\s+/.test(line)) { out.push(list(run(function (l) { return /^\s*[-*+]\s+/.test(l); }), false)); continue; }
      if (/^\s*\d+[.)]\s+/.test(line)) { out.push(list(run(function (l) { return /^\s*\d+[.)]\s+/.test(l); }), true)); continue; }
      if (/^&gt;\s?/.test(line)) {
        const quoted = run(function (l) { return /^&gt;\s?/.test(l); }).map(function (l) { return l.replace(/^&gt;\s?/, ""); });
        out.push("<blockquote>" + blocks(quoted.join("\n")) + "</blockquote>"); continue;
      }
      if (isTableRow(line) && i + 1 < lines.length && /^\s*\|?[\s:|-]+\|?\s*$/.test(lines[i + 1])) {
        const start = i; i += 2;
        while (i < lines.length && isTableRow(lines[i])) i++;
        out.push(table(lines.slice(start, i))); continue;
      }
      const para = run(function (l) { return l.trim() && !/^(#{1,4}\s|\s*[-*+]\s|\s*\d+[.)]\s|&gt;)/.test(l); });
      if (!para.length) { out.push("<p>" + inline(line) + "</p>"); i++; continue; }
      out.push("<p>" + para.map(inline).join("<br>") + "</p>");
    }
    return out.join("");
  }

  function render(source) {
    // NUL marks code spans inside `inline`: a model may not write one of its own.
    const parts = String(source || "").replace(/\u0000/g, "").split(/^```/m);
    let html = "";
    parts.forEach(function (part, index) {
      if (index % 2 === 0) { html += blocks(escapeHtml(part)); return; }
      const newline = part.indexOf("\n");
      const lang = newline === -1 ? "" : part.slice(0, newline).trim().replace(/[^\w+#.-]/g, "");
      const code = newline === -1 ? "" : part.slice(newline + 1).replace(/\n$/, "");
      html += '<div class="code-block"><div class="code-head"><span>' + escapeHtml(lang || "code") +
        '</span><button type="button" class="copy-code">Copy</button></div><pre><code>' + escapeHtml(code) + "</code></pre></div>";
    });
    return html;
  }

  global.SafeMarkdown = { render: render, escapeHtml: escapeHtml };
})(window);
