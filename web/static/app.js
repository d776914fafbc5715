// gitstate's web page: gates per group, environments and their deploys, the
// audit trail of the state branch, file sync; kept live.
//
// Everything shown comes from the JSON API. Data is only ever put in the page
// as text nodes or attribute values (never as HTML), so nothing a user or a
// ticket link carries can run as script.
"use strict";

const TOKEN_KEY = "gitstate.token";
const STATUS_EVERY_MS = 10000;
// Shortest time between two refreshes caused by /api/watch (see watch()).
const REFRESH_INTERVAL_MS = 1000;

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  commit: null,
  services: [],
  holidays: [],
  status: null,
  tab: new URLSearchParams(location.search).get("tab"),
  histories: new Map(), // "g/s/env" -> entries, for the open history panels
  me: null, // GET /api/whoami
  environments: null, // GET /api/deploys/environments, or {error}
  audit: { entries: [], next: null, error: null, filter: {}, paged: false },
  diffs: new Map(), // commit -> detail (or {error}) for the open diffs
};
const AUDIT_PAGE = 30;

// -- small helpers ------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// gatekeeper's stamps look like "2026-11-01 12:30:00+0100".
function parseStamp(stamp) {
  if (!stamp) return null;
  const iso = String(stamp).replace(" ", "T").replace(/([+-]\d\d)(\d\d)$/, "$1:$2");
  const when = new Date(iso);
  return isNaN(when) ? null : when;
}

function age(stamp) {
  const when = stamp instanceof Date ? stamp : parseStamp(stamp);
  if (!when) return "";
  const seconds = Math.max(0, (Date.now() - when.getTime()) / 1000);
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  const days = Math.round(seconds / 86400);
  return `${days} day${days === 1 ? "" : "s"} ago`;
}

function short(sha) {
  return sha ? String(sha).slice(0, 8) : "—";
}

function safeLink(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function seg(name) {
  return encodeURIComponent(name);
}

// -- the API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
    this.reason = reason;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers["X-Authentication"] = state.token;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const reason = (data && (data.reason || data.msg)) || resp.statusText || "request failed";
    throw new ApiError(resp.status, reason);
  }
  return data;
}

// -- alerts -------------------------------------------------------------------

function explain(error) {
  if (!(error instanceof ApiError)) return `Cannot reach gitstate: ${error.message || error}`;
  if (error.status === 401) {
    return `401 Unauthorized: ${error.reason}. Enter a valid token above.`;
  }
  if (error.status === 403) return `403 Forbidden: ${error.reason}`;
  return `${error.status}: ${error.reason}`;
}

function alertError(what, error) {
  const kind = error instanceof ApiError ? `status-${error.status}` : "status-network";
  showAlert(`${what} failed. ${explain(error)}`, kind);
}

function showAlert(text, kind) {
  const box = document.getElementById("alerts");
  const close = el("button", { type: "button", className: "dismiss", "aria-label": "dismiss" }, "×");
  const item = el("div", { className: `alert ${kind || ""}` }, el("span", {}, text), close);
  close.addEventListener("click", () => item.remove());
  box.prepend(item);
  while (box.children.length > 5) box.lastChild.remove();
}

async function act(what, call) {
  try {
    const answer = await call();
    await refreshGates();
    return answer;
  } catch (error) {
    alertError(what, error);
    return null;
  }
}

// -- loading ------------------------------------------------------------------

async function refreshGates() {
  const [gates, holidays] = await Promise.all([
    api("GET", "/api/gates"),
    api("GET", "/api/holidays/"),
  ]);
  state.services = gates.services;
  state.commit = gates.commit;
  state.holidays = holidays.holidays;
  setLive("live", true);
  for (const label of state.histories.keys()) await loadHistory(label);
  render();
}

async function refreshStatus() {
  try {
    state.status = await api("GET", "/code-manager/v1/deploys/status");
  } catch (error) {
    state.status = { error: explain(error) };
  }
  render();
}

async function loadHistory(label) {
  const [group, service, env] = label.split("/");
  try {
    const answer = await api(
      "GET",
      `/api/gates/${seg(group)}/${seg(service)}/${seg(env)}/history?limit=15`,
    );
    state.histories.set(label, answer.history);
  } catch (error) {
    state.histories.set(label, { error: explain(error) });
  }
}

function setLive(text, ok) {
  const live = document.getElementById("live");
  live.textContent = text;
  live.className = `live ${ok ? "ok" : "down"}`;
}

async function watch() {
  for (;;) {
    try {
      const since = encodeURIComponent(state.commit || "");
      const answer = await api("GET", `/api/watch?since=${since}&timeout=25`);
      setLive("live", true);
      if (answer.commit !== state.commit) {
        await refreshGates();
        refreshStatus();
        refreshCode();
        // At most one refresh a second: under heavy gate traffic the branch
        // moves hundreds of times a second, and no reader needs them all.
        await sleep(REFRESH_INTERVAL_MS);
      }
      if (answer.retry) await sleep(answer.retry * 1000);
    } catch (error) {
      setLive("reconnecting…", false);
      await sleep(3000);
      try {
        await refreshGates();
      } catch {
        // still down; the next round tries again
      }
    }
  }
}

// -- rendering ----------------------------------------------------------------

function groups() {
  const byGroup = new Map();
  for (const doc of state.services) {
    if (!byGroup.has(doc.group)) byGroup.set(doc.group, []);
    byGroup.get(doc.group).push(doc);
  }
  return new Map([...byGroup.entries()].sort(([a], [b]) => a.localeCompare(b)));
}

function render() {
  document.getElementById("commit").textContent = state.commit ? `state ${short(state.commit)}` : "";
  const all = groups();
  if (!state.tab || !all.has(state.tab)) state.tab = all.keys().next().value || null;
  renderTabs(all);
  renderGroup(all.get(state.tab) || []);
  renderBanners();
  renderHolidays();
  renderDeploys();
  renderCode();
}

function renderTabs(all) {
  const tabs = document.getElementById("tabs");
  tabs.replaceChildren(
    ...[...all.keys()].map((group) =>
      el(
        "button",
        {
          type: "button",
          role: "tab",
          className: group === state.tab ? "tab active" : "tab",
          "aria-selected": group === state.tab ? "true" : "false",
          dataset: { group },
          onclick: () => {
            state.tab = group;
            const url = new URL(location.href);
            url.searchParams.set("tab", group);
            history.replaceState(null, "", url);
            render();
          },
        },
        group,
      ),
    ),
  );
}

function deployedOf(env) {
  const deployed = state.status?.["file-sync-storage-status"]?.deployed || [];
  return deployed.find((item) => item.environment === env) || null;
}

function clientsOf(env, signature) {
  const clients = state.status?.["file-sync-client-status"]?.["file-sync-clients"] || {};
  return Object.entries(clients).map(([name, client]) => {
    const mine = (client.deployed || []).find((item) => item.environment === env);
    let sync = "unknown";
    if (!client.last_check_in_time) sync = "never checked in";
    else if (!signature) sync = mine ? "has it" : "—";
    else if (mine && mine["deploy-signature"] === signature) sync = "synced";
    else sync = "behind";
    return { name, sync, seen: client.last_check_in_time };
  });
}

function renderGroup(docs) {
  const main = document.getElementById("groups");
  if (!docs.length) {
    main.replaceChildren(el("p", { className: "muted" }, "No gates yet: create some below."));
    return;
  }
  const focused = document.activeElement;
  if (focused && focused.dataset && focused.dataset.message && main.contains(focused)) {
    // The user is typing a message: redraw once they leave the field.
    state.deferred = true;
    return;
  }
  state.deferred = false;
  const envs = [...new Set(docs.flatMap((doc) => Object.keys(doc.environments)))].sort();
  const head = el("tr", {}, el("th", { scope: "col" }, "Service"), envs.map((env) => el("th", { scope: "col" }, env)));
  const rows = docs.map((doc) =>
    el(
      "tr",
      { dataset: { service: `${doc.group}/${doc.name}` } },
      el("th", { scope: "row", className: "service" }, doc.name),
      envs.map((env) =>
        doc.environments[env] ? gateCell(doc, env, doc.environments[env]) : el("td", { className: "none" }, "—"),
      ),
    ),
  );
  main.replaceChildren(el("table", { className: "gates" }, el("thead", {}, head), el("tbody", {}, rows)));
}

function gateCell(doc, env, gate) {
  const label = `${doc.group}/${doc.name}/${env}`;
  const path = `/api/gates/${seg(doc.group)}/${seg(doc.name)}/${seg(env)}`;
  const closed = gate.state === "closed";
  const reasons = gate.closed_by || [];
  const manualClosed = gate.manual_state === "closed";
  const badge = el(
    "div",
    { className: `state ${closed ? "closed" : "open"}`, dataset: { state: gate.state } },
    closed ? "Closed" : "Open",
    reasons.length ? el("span", { className: "why" }, reasons.map((r) => r.kind).join(", ")) : null,
  );
  badge.title = reasons.map((r) => r.detail).join("\n") || "open for deploys";
  const toggle = el(
    "button",
    {
      type: "button",
      className: `toggle ${manualClosed ? "is-closed" : "is-open"}`,
      dataset: { manual: gate.manual_state },
      title: manualClosed ? "closed by hand: click to reopen" : "open by hand: click to close",
      onclick: () =>
        act(`${manualClosed ? "Opening" : "Closing"} ${label}`, () =>
          api("PUT", path, { state: manualClosed ? "open" : "closed" }),
        ),
    },
    manualClosed ? "Reopen" : "Close",
  );
  const when = el("span", { className: "age", title: gate.state_timestamp || "" }, age(gate.state_timestamp));

  const message = el("textarea", { className: "message", rows: 1, placeholder: "message", dataset: { message: label } });
  message.value = gate.message || "";
  message.dataset.saved = gate.message || "";
  let timer = null;
  const save = () => {
    clearTimeout(timer);
    if (message.value === message.dataset.saved) return false;
    const text = message.value;
    message.dataset.saved = text;
    act(`Saving the message of ${label}`, () => api("PUT", path, { message: text }));
    return true;
  };
  message.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(save, 1000);
  });
  message.addEventListener("blur", () => {
    if (!save() && state.deferred) setTimeout(render, 250);
  });
  const messageAge = gate.message_timestamp
    ? el("span", { className: "age", title: gate.message_timestamp }, `message ${age(gate.message_timestamp)}`)
    : null;

  const queue = el(
    "ol",
    { className: "queue" },
    gate.queue.map((ticket) => {
      const href = ticket.link ? safeLink(ticket.link) : null;
      const name = href ? el("a", { href, rel: "noopener noreferrer", target: "_blank" }, short(ticket.id)) : short(ticket.id);
      return el(
        "li",
        { dataset: { ticket: ticket.id } },
        el("span", { className: "ticket", title: ticket.id }, "ticket ", name),
        el("span", { className: "age", title: ticket.updated }, ` ${age(ticket.updated)}`),
        el(
          "button",
          {
            type: "button",
            className: "delete",
            title: `release ticket ${ticket.id}`,
            onclick: () =>
              act(`Releasing ticket ${short(ticket.id)}`, () => api("DELETE", `/api/tickets/${seg(ticket.id)}`)),
          },
          "Delete",
        ),
      );
    }),
  );

  const deployed = deployedOf(env);
  const signature = deployed ? deployed["deploy-signature"] : null;
  const code = el(
    "div",
    { className: "code" },
    state.status && !state.status.error
      ? [
          el(
            "div",
            { className: "deployed", title: signature || "" },
            signature
              ? ["deployed ", el("code", {}, short(signature)), " ", el("span", { className: "age" }, deployed.date ? age(new Date(deployed.date)) : "")]
              : "not deployed",
          ),
          el(
            "ul",
            { className: "clients" },
            clientsOf(env, signature).map((client) =>
              el(
                "li",
                { className: `client ${client.sync.replace(/\W+/g, "-")}`, title: client.seen ? `last check-in ${client.seen}` : "" },
                `${client.name}: ${client.sync}`,
              ),
            ),
          ),
        ]
      : null,
  );

  const open = state.histories.has(label);
  const historyButton = el(
    "button",
    {
      type: "button",
      className: "history-toggle",
      "aria-expanded": open ? "true" : "false",
      onclick: async () => {
        if (state.histories.has(label)) state.histories.delete(label);
        else await loadHistory(label);
        render();
      },
    },
    open ? "Hide history" : "History",
  );
  const history = open ? historyList(state.histories.get(label)) : null;

  return el(
    "td",
    { className: "gate", dataset: { gate: label } },
    el("div", { className: "line" }, badge, toggle, when),
    message,
    messageAge,
    gate.queue.length ? queue : null,
    code,
    historyButton,
    history,
  );
}

function historyList(entries) {
  if (!entries) return el("p", { className: "muted" }, "loading…");
  if (entries.error) return el("p", { className: "muted" }, entries.error);
  return el(
    "ol",
    { className: "history" },
    entries.map((entry) =>
      el(
        "li",
        {},
        el("span", { className: "age", title: entry.time }, age(new Date(entry.time))),
        " ",
        el("code", { title: entry.commit }, short(entry.commit)),
        " ",
        el("span", { className: "subject" }, entry.subject),
      ),
    ),
  );
}

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

function renderBanners() {
  const banners = document.getElementById("banners");
  const now = today();
  banners.replaceChildren(
    ...state.holidays
      .filter((holiday) => holiday.date === now)
      .map((holiday) =>
        el("div", { className: "banner" }, `Today is a holiday: ${holiday.reason} (${holiday.environments.join(", ")})`),
      ),
  );
}

// -- holidays -----------------------------------------------------------------

let holidayDraft = null; // rows being edited, or null to show the server's list

function renderHolidays() {
  const body = document.getElementById("holiday-rows");
  if (holidayDraft) return; // do not disturb an edit in progress
  body.replaceChildren(...state.holidays.map((holiday) => holidayRow(holiday, holiday.source !== "api")));
}

function holidayRow(holiday, readOnly) {
  const input = (name, value, type) => el("input", { name, type: type || "text", value: value || "", disabled: readOnly });
  const row = el(
    "tr",
    { className: readOnly ? "readonly" : "editable" },
    el("td", {}, input("date", holiday.date, "date")),
    el("td", {}, input("reason", holiday.reason)),
    el("td", {}, input("environments", (holiday.environments || []).join(", "))),
    el("td", { className: "muted" }, holiday.source || "api"),
    el("td", {}, readOnly ? null : el("button", { type: "button", onclick: () => { holidayDraft = true; row.remove(); } }, "Remove")),
  );
  if (!readOnly) row.addEventListener("input", () => (holidayDraft = true));
  return row;
}

function collectHolidays() {
  const rows = document.querySelectorAll("#holiday-rows tr.editable");
  return [...rows].map((row) => ({
    date: row.querySelector("[name=date]").value,
    reason: row.querySelector("[name=reason]").value.trim(),
    environments: row
      .querySelector("[name=environments]")
      .value.split(",")
      .map((name) => name.trim())
      .filter(Boolean),
  }));
}

// -- deploys and file sync ----------------------------------------------------

function renderDeploys() {
  const box = document.getElementById("deploys");
  const status = state.status;
  if (!status) {
    box.replaceChildren(el("p", { className: "muted" }, "Loading deploy status…"));
    return;
  }
  if (status.error) {
    box.replaceChildren(el("p", { className: "muted" }, `Deploy status unavailable: ${status.error}`));
    return;
  }
  const queue = status["deploys-status"] || {};
  const counts = ["new", "queued", "deploying", "failed"].map((name) => `${name}: ${(queue[name] || []).length}`);
  const clients = status["file-sync-client-status"] || {};
  const rows = Object.entries(clients["file-sync-clients"] || {}).map(([name, client]) =>
    el(
      "tr",
      {},
      el("td", {}, name),
      el("td", { className: client["synced-with-file-sync-storage"] ? "ok" : "bad" }, client["synced-with-file-sync-storage"] ? "synced" : "not synced"),
      el("td", {}, el("code", {}, short(client["code-commit"]))),
      el("td", { title: client.last_check_in_time || "" }, client.last_check_in_time ? age(new Date(client.last_check_in_time)) : "never"),
    ),
  );
  box.replaceChildren(
    el("p", {}, counts.join(" · ")),
    rows.length
      ? el(
          "table",
          { className: "clients-table" },
          el("thead", {}, el("tr", {}, el("th", {}, "Client"), el("th", {}, "Sync"), el("th", {}, "Code commit"), el("th", {}, "Last check-in"))),
          el("tbody", {}, rows),
        )
      : el("p", { className: "muted" }, "No file-sync clients."),
  );
}

// -- environments, queue, failures, audit trail --------------------------------

async function refreshWho() {
  try {
    state.me = await api("GET", "/api/whoami");
  } catch {
    state.me = null;
  }
  showTokenState();
}

function refreshCode() {
  refreshEnvironments();
  if (!state.audit.paged) refreshAudit();
}

async function refreshEnvironments() {
  try {
    state.environments = await api("GET", "/api/deploys/environments");
  } catch (error) {
    state.environments = { error };
  }
  renderCode();
}

function auditQuery(extra) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries({ ...state.audit.filter, ...extra })) {
    if (value) params.set(key, value);
  }
  params.set("limit", String(AUDIT_PAGE));
  return `/api/audit?${params}`;
}

async function refreshAudit() {
  try {
    const answer = await api("GET", auditQuery({}));
    Object.assign(state.audit, { entries: answer.entries, next: answer.next, error: null, paged: false });
  } catch (error) {
    Object.assign(state.audit, { entries: [], next: null, error, paged: false });
  }
  renderAudit();
}

async function moreAudit() {
  if (!state.audit.next) return;
  try {
    const answer = await api("GET", auditQuery({ before: state.audit.next }));
    state.audit.entries = state.audit.entries.concat(answer.entries);
    state.audit.next = answer.next;
    state.audit.paged = true;
  } catch (error) {
    alertError("Loading older entries", error);
  }
  renderAudit();
}

function setupAudit() {
  const form = document.getElementById("audit-filter");
  const asIso = (value) => (value ? new Date(value).toISOString() : "");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.audit.filter = {
      gate: form.gate.value.trim(),
      environment: form.environment.value.trim(),
      actor: form.actor.value.trim(),
      since: asIso(form.since.value),
      until: asIso(form.until.value),
    };
    refreshAudit();
  });
  form.addEventListener("reset", () => {
    state.audit.filter = {};
    setTimeout(refreshAudit, 0);
  });
  document.getElementById("audit-more").addEventListener("click", moreAudit);
}

async function toggleDiff(commit) {
  if (state.diffs.has(commit)) state.diffs.delete(commit);
  else {
    try {
      state.diffs.set(commit, await api("GET", `/api/audit/${seg(commit)}`));
    } catch (error) {
      state.diffs.set(commit, { error: explain(error) });
    }
  }
  renderAudit();
}

async function rollBack(env) {
  if (!confirm(`Roll ${env} back to its previous version?`)) return;
  try {
    const answer = await api("POST", "/code-manager/v1/rollbacks", { environment: env });
    showAlert(`Rolled ${env} back to ${short(answer["deploy-signature"])}.`, "notice");
  } catch (error) {
    alertError(`Rolling back ${env}`, error);
  }
  refreshEnvironments();
}

function needsToken(error) {
  return error instanceof ApiError && error.status === 401;
}

function renderCode() {
  const note = document.getElementById("code-note");
  const box = document.getElementById("environments");
  const envs = state.environments;
  if (!envs) return;
  if (envs.error) {
    note.className = needsToken(envs.error) ? "needs-token error" : "error";
    note.textContent = needsToken(envs.error)
      ? "Deploys and the audit trail need a token: enter one above (gates stay readable)."
      : `Environments unavailable: ${explain(envs.error)}`;
    box.replaceChildren();
  } else {
    note.className = "muted";
    note.textContent = "";
    box.replaceChildren(environmentsTable(envs.environments));
  }
  renderQueue();
}

function environmentsTable(rows) {
  if (!rows.length) return el("p", { className: "muted" }, "Nothing deployed yet.");
  const head = ["Environment", "Commit", "Branch", "Deployed", "By", "File sync", "Now", ""].map((name) =>
    el("th", { scope: "col" }, name),
  );
  return el(
    "table",
    { className: "environments" },
    el("thead", {}, el("tr", {}, head)),
    el("tbody", {}, rows.map(environmentRow)),
  );
}

function environmentRow(row) {
  const env = row.environment;
  const when = row.deployed_at ? new Date(row.deployed_at) : null;
  const clients = el(
    "ul",
    { className: "clients" },
    row.clients.map((client) =>
      el(
        "li",
        {
          className: `client ${client.status}`,
          dataset: { client: client.client },
          title: client.failed || (client.last_check_in_time ? `last check-in ${client.last_check_in_time}` : ""),
        },
        `${client.client}: ${client.status}`,
      ),
    ),
  );
  const now = [];
  if (row.deploying) now.push(el("span", { className: "badge deploying" }, `deploying #${row.deploying.id}`));
  for (const queued of row.queued) {
    now.push(el("span", { className: "badge", title: queued.blocked || "" }, `queued #${queued.id}`));
  }
  if (row.last_failure) {
    const error = row.last_failure.error || {};
    now.push(
      el(
        "div",
        { className: "failure", title: error.kind || "" },
        el("span", { className: "badge failed" }, `#${row.last_failure.id} failed`),
        " ",
        el("span", { className: "error" }, error.msg || "failed"),
      ),
    );
  }
  const may = row.may_roll_back;
  const rollback = row.signature
    ? el(
        "button",
        {
          type: "button",
          className: "rollback",
          disabled: !may,
          title: may ? `roll ${env} back to its previous version` : `needs the permission deploy:${env}`,
          onclick: () => rollBack(env),
        },
        "Roll back",
      )
    : null;
  const by = row.deployed_by ? [row.deployed_by, row.rollback ? " (rollback)" : ""] : "—";
  return el(
    "tr",
    { dataset: { environment: env } },
    el("th", { scope: "row" }, env),
    el("td", { className: "signature", title: row.signature || "" }, row.signature ? el("code", {}, short(row.signature)) : "not deployed"),
    el("td", { className: "branch", title: row.source ? `source ${row.source}` : "" }, row.branch || "—"),
    el("td", { className: "age", title: row.deployed_at || "" }, when ? age(when) : "—"),
    el("td", { className: "by" }, by),
    el("td", { className: "clients" }, clients),
    el("td", { className: "now" }, now.length ? now : "idle"),
    el("td", {}, rollback),
  );
}

function renderQueue() {
  const queueBox = document.getElementById("queue");
  const failedBox = document.getElementById("failed");
  const status = state.status;
  if (!status || status.error) {
    const text = status ? "unavailable" : "loading…";
    queueBox.replaceChildren(el("li", { className: "muted" }, text));
    failedBox.replaceChildren(el("li", { className: "muted" }, text));
    return;
  }
  const sections = status["deploys-status"] || {};
  const waiting = [
    ...(sections.deploying || []).map((item) => ({ ...item, status: "deploying" })),
    ...(sections.new || []).map((item) => ({ ...item, status: "new" })),
    ...(sections.queued || []).map((item) => ({ ...item, status: "queued" })),
  ];
  queueBox.replaceChildren(
    ...(waiting.length
      ? waiting.map((item) =>
          el(
            "li",
            { dataset: { deploy: item.id }, className: item.status },
            el("span", { className: `badge ${item.status}` }, item.status),
            ` #${item.id} ${item.environment}`,
            item["waiting-for"] ? el("span", { className: "muted" }, ` (${item["waiting-for"]})`) : null,
            el("span", { className: "age", title: item["queued-at"] || "" }, ` queued ${age(new Date(item["queued-at"]))}`),
          ),
        )
      : [el("li", { className: "muted" }, "Nothing queued or deploying.")]),
  );
  const failed = sections.failed || [];
  failedBox.replaceChildren(
    ...(failed.length
      ? failed.map((item) =>
          el(
            "li",
            { dataset: { deploy: item.id } },
            el("span", { className: "badge failed" }, `#${item.id}`),
            ` ${item.environment}: `,
            el("span", { className: "error", title: (item.error && item.error.kind) || "" }, (item.error && item.error.msg) || "failed"),
          ),
        )
      : [el("li", { className: "muted" }, "No recent failures.")]),
  );
}

function renderAudit() {
  const list = document.getElementById("audit");
  const more = document.getElementById("audit-more");
  const note = document.getElementById("audit-state");
  const audit = state.audit;
  more.hidden = !audit.next;
  if (audit.error) {
    list.replaceChildren();
    note.textContent = needsToken(audit.error)
      ? "The audit trail needs a token: enter one above."
      : `Audit trail unavailable: ${explain(audit.error)}`;
    return;
  }
  note.textContent = audit.entries.length ? "" : "No entries match.";
  list.replaceChildren(
    ...audit.entries.map((entry) => {
      const tags = [
        ...entry.gates.map((gate) => `gate ${gate}`),
        ...entry.environments.map((env) => `env ${env}`),
        ...entry.deploys.map((id) => `deploy #${id}`),
      ];
      const detail = state.diffs.get(entry.commit);
      return el(
        "li",
        { dataset: { commit: entry.commit } },
        el("span", { className: "age", title: entry.time }, age(new Date(entry.time))),
        " ",
        el("code", { title: entry.commit }, short(entry.commit)),
        " ",
        // Subjects mostly start with the actor already; name it only otherwise.
        entry.subject.startsWith(`${entry.actor} `) ? null : [el("strong", { className: "actor" }, entry.actor), " "],
        el("span", { className: "subject" }, entry.subject),
        " ",
        el(
          "button",
          { type: "button", className: "diff-toggle", "aria-expanded": detail ? "true" : "false", onclick: () => toggleDiff(entry.commit) },
          detail ? "Hide changes" : `Changes (${entry.paths_total})`,
        ),
        tags.length ? el("div", { className: "tags" }, tags.join(" · ")) : null,
        detail ? diffView(detail) : null,
      );
    }),
  );
}

function diffView(detail) {
  if (detail.error) return el("p", { className: "error" }, detail.error);
  return el(
    "div",
    { className: "changes" },
    detail.changes.map((change) => el("pre", { className: "diff", dataset: { path: change.path } }, change.diff || `${change.change} ${change.path}`)),
  );
}

// -- wiring -------------------------------------------------------------------

function showTokenState() {
  const who = state.token && state.me && state.me.authentication ? ` (${state.me.user})` : "";
  document.getElementById("token-state").textContent = state.token ? `token set${who}` : "no token";
}

function setup() {
  const tokenInput = document.getElementById("token");
  tokenInput.value = state.token;
  showTokenState();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = tokenInput.value.trim();
    if (state.token) localStorage.setItem(TOKEN_KEY, state.token);
    else localStorage.removeItem(TOKEN_KEY);
    showTokenState();
    document.getElementById("alerts").replaceChildren();
    refreshGates().catch((error) => alertError("Loading the gates", error));
    refreshStatus();
    refreshWho();
    refreshCode();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    state.token = "";
    tokenInput.value = "";
    localStorage.removeItem(TOKEN_KEY);
    state.me = null;
    showTokenState();
    refreshWho();
    refreshCode();
  });

  document.getElementById("new-gate").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const group = form.group.value.trim();
    const service = form.service.value.trim();
    const environments = form.environments.value.split(",").map((name) => name.trim()).filter(Boolean);
    const done = await act(`Creating ${group}/${service}`, () =>
      api("POST", `/api/gates/${seg(group)}/${seg(service)}`, { environments }),
    );
    if (done) {
      form.service.value = "";
      state.tab = group;
      render();
    }
  });

  document.getElementById("holiday-add").addEventListener("click", () => {
    holidayDraft = true;
    document.getElementById("holiday-rows").append(holidayRow({ date: today(), reason: "", environments: ["*"] }, false));
  });
  document.getElementById("holiday-save").addEventListener("click", async () => {
    const holidays = collectHolidays();
    const done = await act("Saving the holidays", () => api("POST", "/api/holidays/", { holidays }));
    if (done) {
      holidayDraft = null;
      render();
    }
  });

  refreshGates()
    .catch((error) => alertError("Loading the gates", error))
    .finally(() => watch());
  refreshStatus();
  refreshWho();
  refreshCode();
  setupAudit();
  // Client check-ins are no state commits: look again now and then.
  setInterval(() => {
    refreshStatus();
    refreshEnvironments();
  }, STATUS_EVERY_MS);
}

document.addEventListener("DOMContentLoaded", setup);
