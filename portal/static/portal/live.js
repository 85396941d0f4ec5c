// Keeps the device page live without reloading it: every 2 s it asks the portal's
// live endpoint for fresh fragments (chart, latest values, commands, alerts) and
// swaps them in. Forms on the page are posted in the background for the same reason.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FULL_EVERY = 15; // polls; redraw the chart now and then so old points slide out

  var chart = document.getElementById("live-chart");
  if (!chart) return;
  var busy = false;
  var again = false;
  var polls = 0;

  function swap(id, html) {
    var element = document.getElementById(id);
    if (element && typeof html === "string") element.innerHTML = html;
  }

  function apply(answer) {
    if (answer.chart_svg) {
      chart.innerHTML = answer.chart_svg;
      chart.dataset.latestTs = answer.latest_ts || "";
      chart.dataset.points = String(answer.points || 0);
    }
    swap("latest-values", answer.latest_html);
    var body = document.querySelector("#commands tbody");
    if (body && typeof answer.commands_html === "string") body.innerHTML = answer.commands_html;
    swap("alerts", answer.alerts_html);
  }

  function poll() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    var url = chart.dataset.liveUrl;
    var since = chart.dataset.latestTs;
    polls += 1;
    if (since && polls % FULL_EVERY !== 0) url += "&since=" + encodeURIComponent(since);
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected || !response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(apply)
      .catch(function () { /* a missed refresh is retried on the next tick */ })
      .finally(function () {
        busy = false;
        if (again) {
          again = false;
          poll();
        }
      });
  }

  function showErrors(box, errors) {
    box.textContent = "";
    Object.keys(errors).forEach(function (field) {
      errors[field].forEach(function (error) {
        var line = document.createElement("p");
        line.textContent = (field === "__all__" ? "" : field + ": ") + error.message;
        box.appendChild(line);
      });
    });
    box.hidden = false;
  }

  function post(form) {
    return fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
  }

  var commandForm = document.getElementById("command-form");
  if (commandForm) {
    commandForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var box = document.getElementById("command-error");
      post(commandForm)
        .then(function (response) {
          return response.json().then(function (body) {
            if (response.ok) {
              box.hidden = true;
              commandForm.reset();
            } else {
              showErrors(box, body.errors || { __all__: [{ message: "Could not send the command." }] });
            }
          });
        })
        .catch(function () {
          showErrors(box, { __all__: [{ message: "Could not reach the server; try again." }] });
        })
        .finally(poll);
    });
  }

  // Alerts are redrawn on every poll, so their forms are caught where they bubble to.
  var alerts = document.getElementById("alerts");
  if (alerts) {
    alerts.addEventListener("submit", function (event) {
      if (!event.target.classList.contains("ack")) return;
      event.preventDefault();
      post(event.target).finally(poll);
    });
  }

  var range = document.getElementById("range");
  if (range) {
    range.addEventListener("change", function () {
      range.form.submit();
    });
  }

  setInterval(function () {
    if (!document.hidden) poll();
  }, POLL_MS);
})();
