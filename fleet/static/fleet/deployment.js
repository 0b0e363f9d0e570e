// The deployment form: "Use" puts a catalogue model in the model path; "Add a label" adds a key=value row.
"use strict";
(function () {
  function markChosen(picker) {
    const input = document.getElementById(picker.dataset.for);
    picker.querySelectorAll("tbody tr").forEach(function (row) {
      row.classList.toggle("chosen", row.dataset.path === input.value);
    });
  }

  document.addEventListener("click", function (event) {
    const use = event.target.closest(".catalogue-use");
    if (use) {
      const picker = use.closest(".catalogue-picker");
      const input = document.getElementById(picker.dataset.for);
      input.value = use.dataset.path;
      input.dispatchEvent(new Event("change", { bubbles: true }));
      markChosen(picker);
      input.focus();
      return;
    }
    const add = event.target.closest(".labels-add");
    if (add) {
      const rows = add.closest(".labels-widget").querySelector("tbody");
      const row = rows.querySelector("tr:last-child").cloneNode(true);
      row.querySelectorAll("input").forEach(function (input) { input.value = ""; });
      rows.appendChild(row);
      row.querySelector("input").focus();
    }
  });

  document.addEventListener("input", function (event) {
    document.querySelectorAll(".catalogue-picker").forEach(function (picker) {
      if (picker.dataset.for === event.target.id) markChosen(picker);
    });
  });
})();
