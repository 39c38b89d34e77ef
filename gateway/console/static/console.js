// The console's only script: live chat pages (short polling) and confirm prompts. No build step.
(function () {
  "use strict";

  function poll(live) {
    var url = live.getAttribute("data-live-url");
    var every = parseInt(live.getAttribute("data-poll-ms"), 10) || 1500;
    function tick() {
      var version = live.getAttribute("data-version") || "";
      fetch(url + "?v=" + encodeURIComponent(version), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (data && data.html !== undefined && data.version !== version) {
            live.innerHTML = data.html;
            live.setAttribute("data-version", data.version);
          }
        })
        .catch(function () { /* offline for a moment: try again at the next tick */ })
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelector("[data-live-url]");
    if (live) { poll(live); }
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  });
})();
