// Live updates for the console's lists. Pages are complete without this script: it only
// re-fetches the table when the broker says something changed (server-sent events), and
// falls back to polling every 5 s while the event stream is down.
(function () {
  "use strict";
  var box = document.querySelector("[data-live]");
  if (!box) { return; }
  var status = document.querySelector("[data-live-status]");
  var timer = null;
  var busy = false;

  function say(text, cls) {
    if (status) { status.textContent = text; status.className = "live " + (cls || ""); }
  }

  function refresh() {
    if (busy) { return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 200) { return r.text(); }
        if (r.status === 401 || r.redirected) { say("signed out: reload to sign in", "down"); }
        return null;
      })
      .then(function (html) { if (html !== null) { box.innerHTML = html; } })
      .catch(function () { say("broker unreachable: retrying", "down"); })
      .then(function () { busy = false; });
  }

  function poll() {
    if (timer === null) { timer = window.setInterval(refresh, 5000); }
  }

  if (!window.EventSource) { say("refreshing every 5 s", "poll"); poll(); return; }
  var es = new EventSource(document.body.dataset.events || (box.dataset.live.replace(/\/[^/]*$/, "") + "/events"));
  es.addEventListener("change", refresh);
  es.onopen = function () {
    say("live", "up");
    if (timer !== null) { window.clearInterval(timer); timer = null; refresh(); }
  };
  es.onerror = function () { say("live updates interrupted: refreshing every 5 s", "poll"); poll(); };
})();
