// The console's only script (its pages work without it, but for live updates).
// Live pages: the server sends a `changed` event when what the page shows has changed;
// the page then fetches itself and swaps in its live part, unless the operator is busy
// in it (typing, or with commands selected): then it only says that the page changed.
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    if (event.target.matches("select[data-submit-on-change]")) { event.target.form.submit(); }
  });
  var live = document.getElementById("live");
  var stale = document.querySelector(".stale");
  if (!live || !live.dataset.source || !window.EventSource) { return; }
  function busy() {
    var focused = document.activeElement;
    if (focused && live.contains(focused) && focused.matches("input, textarea, select")) { return true; }
    return Array.prototype.some.call(live.querySelectorAll("input, textarea"), function (e) {
      return e.type === "checkbox" || e.type === "radio" ? e.checked !== e.defaultChecked : e.value !== e.defaultValue;
    });
  }
  function reload() {
    if (busy()) { stale.hidden = false; return; }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!fresh || busy()) { stale.hidden = false; return; }
        live.innerHTML = fresh.innerHTML;
        live.dataset.updated = String(Date.now());
        stale.hidden = true;
      })
      .catch(function () { stale.hidden = false; });
  }
  var source = new EventSource(live.dataset.source);
  source.addEventListener("open", function () { live.dataset.listening = "yes"; });
  source.addEventListener("changed", reload);
})();
