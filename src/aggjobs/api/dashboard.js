"use strict";
// The dashboard's and the run page's script (inlined into both, nothing loaded from
// elsewhere). It carries a ?token= from the address into the page's links, refreshes the
// content in place (every 15 s; every 3 s while a run or a backfill is under way), and sends
// the operators' actions to the API with the same token, each after a confirmation.
var REFRESH_MS = 15000, BUSY_REFRESH_MS = 3000, timer = null;

function token() {
  return new URLSearchParams(window.location.search).get("token");
}

// Carries a ?token= from this page's address into its own links, so that they work too.
function authLinks(root) {
  var secret = token();
  if (!secret) { return; }
  root.querySelectorAll("a[data-auth]").forEach(function (a) {
    var url = new URL(a.getAttribute("href"), window.location.href);
    url.searchParams.set("token", secret);
    a.setAttribute("href", url.pathname + url.search);
  });
}

function schedule() {
  window.clearTimeout(timer);
  var busy = document.querySelector("[data-live]") !== null;
  timer = window.setTimeout(refresh, busy ? BUSY_REFRESH_MS : REFRESH_MS);
}

// Re-fetches this page and swaps its content in place (same origin only).
function refresh() {
  var state = document.getElementById("refresh-state");
  fetch(window.location.href, {credentials: "same-origin", cache: "no-store"})
    .then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    })
    .then(function (text) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      ["content", "verdict-box", "checked", "report"].forEach(function (id) {
        var fresh = doc.getElementById(id), old = document.getElementById(id);
        if (fresh && old) { old.innerHTML = fresh.innerHTML; old.className = fresh.className; }
      });
      document.title = doc.title;
      authLinks(document);
      state.textContent = "refreshes every 15 s";
      state.className = "";
    })
    .catch(function (err) {
      state.textContent = "refresh failed (" + err.message + "), retrying";
      state.className = "error";
    })
    .then(schedule);
}

// What an action's answer says, with a link to the run or the backfills it started.
function report(ok, text, href) {
  var box = document.getElementById("action-result");
  box.className = ok ? "ok" : "error";
  box.textContent = text;
  if (href) {
    var a = document.createElement("a");
    a.setAttribute("href", href);
    a.setAttribute("data-auth", "");
    a.textContent = " open";
    box.appendChild(a);
    authLinks(box);
  }
}

function describe(body) {
  if (body.backfills) {
    return "backfill " + body.backfills.map(function (b) { return b.id; }).join(", ") +
      " queued (" + body.backfills.map(function (b) { return b.rollup; }).join(", ") + ")";
  }
  if (body.cancelled !== undefined) { return "backfill " + body.id + ": " + body.status; }
  return "run " + body.id + " of " + body.job + ": " + body.status;
}

// POSTs to the API with the page's token; the answer is shown, the page refreshed.
function act(method, url, body, question) {
  if (!window.confirm(question)) { return; }
  var headers = {"Content-Type": "application/json"};
  if (token()) { headers.Authorization = "Bearer " + token(); }
  report(true, "sent: " + question, null);
  fetch(url, {method: method, headers: headers, credentials: "same-origin",
              body: body === null ? null : JSON.stringify(body)})
    .then(function (response) {
      return response.json().then(function (answer) { return [response, answer]; });
    })
    .then(function (pair) {
      var response = pair[0], answer = pair[1];
      if (!response.ok) {
        var detail = typeof answer.detail === "string" ? answer.detail
          : JSON.stringify(answer.detail);
        report(false, "refused (HTTP " + response.status + "): " + detail, null);
        return;
      }
      var href = answer.id && answer.job ? "/runs/" + answer.id : null;
      report(true, describe(answer), href);
    })
    .catch(function (err) { report(false, "failed: " + err.message, null); })
    .then(refresh);
}

// A click on any button with data-url (run now, retry, cancel): delegated, so that the
// buttons of refreshed content work too.
function clicked(event) {
  var button = event.target.closest("button[data-url]");
  if (!button) { return; }
  event.preventDefault();
  act("POST", button.getAttribute("data-url"), null, button.getAttribute("data-confirm"));
}

function utc(value) {
  return value ? value + (value.length === 16 ? ":00Z" : "Z") : value;
}

function backfillSubmitted(event) {
  event.preventDefault();
  var form = event.target;
  var rollups = Array.prototype.map.call(
    form.querySelectorAll("input[name=rollup]:checked"), function (box) { return box.value; });
  var body = {"from": utc(form.elements.from.value), "to": utc(form.elements.to.value)};
  if (rollups.length) { body.rollups = rollups; }
  act("POST", "/api/backfills", body, "Backfill " +
      (rollups.length ? rollups.join(", ") : "every rollup") + " from " + body.from +
      " to " + body.to + "?");
}

authLinks(document);
document.addEventListener("click", clicked);
var backfillForm = document.getElementById("backfill-form");
if (backfillForm) { backfillForm.addEventListener("submit", backfillSubmitted); }
document.body.setAttribute("data-ready", "1");
schedule();
