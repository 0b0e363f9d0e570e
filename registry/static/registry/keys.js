// The new key's secret banner: Copy puts the secret on the clipboard (selected, where the browser refuses).
"use strict";
document.addEventListener("click", function (event) {
  const button = event.target.closest(".key-copy");
  if (!button) return;
  const secret = document.getElementById(button.dataset.copy);
  const done = function () { button.textContent = "Copied"; };
  const select = function () {
    const range = document.createRange();
    range.selectNodeContents(secret);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(secret.textContent).then(done, select);
  } else {
    select();
  }
});
