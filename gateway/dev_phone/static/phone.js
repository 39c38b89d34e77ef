// The dev phone's script: send texts (with an optional image) and show the thread live. No build step.
(function () {
  "use strict";
  var csrf = document.querySelector("meta[name=csrf-token]").getAttribute("content");
  var last = "";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text) { node.textContent = text; }
    return node;
  }

  function render(data) {
    var key = JSON.stringify(data);
    if (key === last) { return; }
    last = key;
    var list = document.getElementById("thread");
    list.innerHTML = "";
    data.items.forEach(function (m) {
      var li = el("li", "bubble" + (m.mine ? " mine" : ""));
      li.setAttribute("data-sid", m.sid);
      m.media.forEach(function (src) {
        if (src) { var img = el("img"); img.src = src; img.alt = "image"; li.appendChild(img); }
      });
      if (m.body) { li.appendChild(el("span", "body", m.body)); }
      if (m.mine && m.note) { li.appendChild(el("small", "", m.note)); }
      list.appendChild(li);
    });
    list.scrollTop = list.scrollHeight;
    if (!data.webhook) {
      document.getElementById("hint").textContent =
        "This number's SMS webhook is not set: configure it (Numbers page of the console, or smsgw numbers configure).";
    }
  }

  function refresh() {
    var me = document.getElementById("me").value, ours = document.getElementById("ours").value;
    return fetch("/dev/phone/thread.json?me=" + encodeURIComponent(me) + "&ours=" + encodeURIComponent(ours),
                 { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(render)
      .catch(function () { /* the dev server restarts: try again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("compose");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = new FormData(form);
      data.append("me", document.getElementById("me").value);
      data.append("ours", document.getElementById("ours").value);
      var error = document.getElementById("error");
      error.textContent = "";
      fetch("/dev/phone/send", { method: "POST", body: data, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (!res.ok) { error.textContent = res.body.error || "Not sent."; return; }
          form.reset();
          refresh();
        });
    });
    document.getElementById("me").addEventListener("change", refresh);
    document.getElementById("ours").addEventListener("change", refresh);
    refresh();
    setInterval(refresh, 1000);
  });
})();
