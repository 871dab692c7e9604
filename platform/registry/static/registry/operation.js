/* A model operation's page follows its job: polls the progress URL every second while it runs,
   then reloads to show the result or the error. */
(function () {
  "use strict";
  var live = document.getElementById("operation-live");
  if (!live) { return; }
  var status = live.getAttribute("data-status");
  if (status === "succeeded" || status === "failed") { return; }
  var url = live.getAttribute("data-progress-url");

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
      .then(function (state) {
        var percent = Math.round(state.progress * 100);
        document.getElementById("operation-progress").value = percent;
        document.getElementById("operation-percent").textContent = percent + "%";
        document.getElementById("operation-status").textContent = state.status_display;
        document.getElementById("operation-step").textContent = state.step;
        live.setAttribute("data-status", state.status);
        if (state.finished) { window.location.reload(); return; }
        window.setTimeout(poll, 1000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
