// The moderator console's keyboard shortcuts, reveal and lease keep-alive. Written by hand, served
// by the app, no dependencies. Everything works without it except the shortcuts and the in-place
// reveal; the server checks every action again.
"use strict";

// The playground: drop an image on the form; the trace page refreshes until the decision.
(function () {
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  if (drop && input) {
    drop.addEventListener("dragover", function (event) {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", function () {
      drop.classList.remove("over");
    });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      drop.classList.remove("over");
      if (event.dataTransfer && event.dataTransfer.files.length) input.files = event.dataTransfer.files;
    });
  }
  const trace = document.querySelector(".trace");
  if (trace && trace.dataset.done !== "yes") setTimeout(function () { location.reload(); }, 700);
})();

(function () {
  const page = document.querySelector(".case");
  if (!page) return;
  const held = page.dataset.held === "yes";
  const csrf = page.dataset.csrf;
  const task = page.dataset.task;
  const form = document.getElementById("decision-form");
  const help = document.getElementById("help");
  const image = document.getElementById("case-image");
  const state = document.getElementById("image-state");
  const reveal = document.getElementById("reveal");

  function typing(target) {
    const tag = (target && target.tagName) || "";
    return tag === "TEXTAREA" || tag === "SELECT" || (tag === "INPUT" && !["radio", "checkbox"].includes(target.type));
  }

  function choose(action) {
    const radio = document.getElementById("action-" + action);
    if (radio) {
      radio.checked = true;
      radio.focus();
    }
  }

  function doReveal() {
    if (!image || !reveal || image.dataset.revealed === "yes") return;
    image.src = image.dataset.original;
    image.alt = "The original image";
    image.dataset.revealed = "yes";
    if (state) state.textContent = "Original shown (recorded in the audit log).";
    const used = document.getElementById("budget-used");
    if (used && page.dataset.graphic === "yes") used.textContent = String(Number(used.textContent) + 1);
    reveal.disabled = true;
  }

  if (reveal) reveal.addEventListener("click", doReveal);

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(event.target)) {
      event.target.blur(); // back to the shortcuts
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const keys = { a: "allow", r: "restrict", b: "block", e: "escalate" };
    if (event.key === "?") {
      if (help) help.hidden = !help.hidden;
    } else if (!held) {
      return;
    } else if (keys[event.key]) {
      choose(keys[event.key]);
    } else if (event.key === "v") {
      doReveal();
    } else if (event.key === "s") {
      document.getElementById("skip-form").requestSubmit();
    } else if (event.key === "n") {
      if (form) form.requestSubmit();
    } else {
      return;
    }
    event.preventDefault();
  });

  // Keep the lease while the page is open (the server gives it back when the tab is gone).
  if (held) {
    const every = Math.max(10, Number(page.dataset.leaseS || 600) / 3) * 1000;
    setInterval(function () {
      fetch("/console/tasks/" + task + "/heartbeat", {
        method: "POST",
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
    }, every);
  }
})();
