// The agent side panel. Plain script, no build step, served by the service itself (CSP: 'self' only).
// It calls the public JSON API (/v1/decide, /v1/outcomes) and the panel's own /panel/session and
// /panel/v1/changes; it re-decides only when the customer's profile version moved (each decision is a
// compliance record) or when a shown action's validity ends.
"use strict";

(() => {
  const root = document.getElementById("nba-panel");
  if (!root || !document.getElementById("nba-actions")) return; // the bad-link page has nothing to run

  const cfg = {
    customer: root.dataset.customer,
    conversation: root.dataset.conversation || "",
    tokens: root.dataset.auth === "token",
    origins: (root.dataset.origins || "").split(" ").filter(Boolean),
  };
  const $ = (id) => document.getElementById(id);
  const ui = {
    alert: $("nba-alert"), alertText: $("nba-alert-text"), retryLine: $("nba-retry-line"),
    retryWhen: $("nba-retry-when"), retry: $("nba-retry"), status: $("nba-status"), loading: $("nba-loading"),
    list: $("nba-actions"), empty: $("nba-empty"), later: $("nba-later"), laterList: $("nba-later-list"),
    done: $("nba-done"), doneList: $("nba-done-list"),
  };
  const OUTCOME_WORDS = { ACCEPTED: "Accepted", DECLINED: "Declined", NOT_OFFERED: "Not now" };
  const MAX_BACKOFF_S = 15;
  const MAX_TIMER_MS = 6 * 3600 * 1000;

  let hostToken = null; // the CRM's JWT, kept in memory only, to sign in again if the session is refused
  let session = null; // { token, renewTimer }
  let version = null; // the profile version the shown decision was made on
  let decision = null;
  let needDecide = false;
  let offline = false;
  let poll = null; // the AbortController of the long poll in flight
  let expiryTimer = null;
  let wake = null; // ends the current wait early (Retry now, a new host token)
  let failures = 0;
  let tokenArrived = null;
  const storageKey = `nba-panel:v1:${cfg.customer}:${cfg.conversation || "-"}`;
  const memory = loadMemory();

  class ApiError extends Error {
    constructor(kind, message, retryAfter = 0) {
      super(message);
      this.kind = kind; // network, busy, auth, denied, notfound, invalid, aborted
      this.retryAfter = retryAfter;
    }
  }

  // ---- memory of this call (survives a reload of the frame; sessionStorage may be unavailable) ----
  function loadMemory() {
    try {
      const saved = JSON.parse(window.sessionStorage.getItem(storageKey) || "null");
      if (saved && Array.isArray(saved.later) && Array.isArray(saved.done)) return saved;
    } catch (_) { /* partitioned or blocked storage: keep it in this page only */ }
    return { later: [], done: [] };
  }
  function saveMemory() {
    try { window.sessionStorage.setItem(storageKey, JSON.stringify(memory)); } catch (_) { /* see loadMemory */ }
  }

  // ---- calls ----
  async function call(method, path, body, { signal, bearer } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = bearer || (session && session.token);
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    let data = null;
    try {
      response = await fetch(path, {
        method, headers, signal, cache: "no-store", credentials: "omit",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      data = await response.json().catch(() => null);
    } catch (error) {
      if (error && error.name === "AbortError") throw new ApiError("aborted", "aborted");
      throw new ApiError("network", "the service cannot be reached");
    }
    if (response.ok) return data;
    const message = (data && data.message) || `HTTP ${response.status}`;
    const status = response.status;
    if (status === 401) throw new ApiError("auth", message);
    if (status === 403) throw new ApiError("denied", message);
    if (status === 404) throw new ApiError("notfound", message);
    if (status === 429) throw new ApiError("busy", message, Number(response.headers.get("Retry-After")) || 1);
    if (status === 400) throw new ApiError("invalid", message);
    throw new ApiError("network", message); // 5xx: the service or its store cannot answer now
  }

  // A session refused mid-way (expired, or a server restarted with a new secret) is renewed once.
  async function authed(method, path, body, options) {
    try {
      return await call(method, path, body, options);
    } catch (error) {
      if (error.kind !== "auth" || !cfg.tokens) throw error;
      session = null;
      await signIn();
      return call(method, path, body, options);
    }
  }

  // ---- signing in: the host's JWT from the URL fragment or postMessage, exchanged for a panel session ----
  function tokenFromFragment() {
    const token = new URLSearchParams(window.location.hash.slice(1)).get("token");
    if (window.location.hash) {
      // Out of the address bar and the history: the fragment was never sent to a server or logged.
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return token;
  }

  function allowedOrigin(origin) {
    if (origin === window.location.origin) return true;
    let seen;
    try { seen = new URL(origin); } catch (_) { return false; }
    return cfg.origins.some((pattern) => {
      const wildcard = pattern.includes("://*.");
      let allowed;
      try { allowed = new URL(pattern.replace("://*.", "://")); } catch (_) { return false; }
      if (seen.protocol !== allowed.protocol || seen.port !== allowed.port) return false;
      return wildcard ? seen.hostname.endsWith(`.${allowed.hostname}`) : seen.hostname === allowed.hostname;
    });
  }

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent || !allowedOrigin(event.origin)) return;
    const data = event.data;
    if (data && data.type === "nba-panel:token" && typeof data.token === "string" && data.token) {
      hostToken = data.token;
      if (tokenArrived) tokenArrived();
      if (wake) wake();
    }
  });

  function askHostForToken() {
    // Only the token request goes out, and it carries nothing: CSP frame-ancestors decides who the parent can be.
    if (window.parent !== window) window.parent.postMessage({ type: "nba-panel:token-needed" }, "*");
  }

  async function signIn() {
    if (!cfg.tokens) return;
    if (session) {
      try {
        return adopt(await call("POST", "/panel/session", undefined, { bearer: session.token }));
      } catch (error) {
        if (error.kind !== "auth") throw error;
        session = null;
      }
    }
    for (;;) {
      if (!hostToken) hostToken = tokenFromFragment();
      if (!hostToken) {
        showAlert("Waiting for the CRM to sign you in to the panel…", false);
        askHostForToken();
        await new Promise((resolve) => { tokenArrived = resolve; });
        tokenArrived = null;
        continue;
      }
      try {
        adopt(await call("POST", "/panel/session", undefined, { bearer: hostToken }));
        return;
      } catch (error) {
        if (error.kind !== "auth" && error.kind !== "denied") throw error;
        hostToken = null;
        const why = error.kind === "denied"
          ? `This sign-in may not see customer actions: ${error.message}.`
          : `The CRM's sign-in was refused: ${error.message}.`;
        showAlert(`${why} Reopen the panel from the CRM.`, false);
        askHostForToken();
        await new Promise((resolve) => { tokenArrived = resolve; });
        tokenArrived = null;
      }
    }
  }

  function adopt(answer) {
    if (session && session.renewTimer) clearTimeout(session.renewTimer);
    session = { token: answer.token, renewTimer: null };
    const renewMs = Math.min(Math.max(answer.renew_in_seconds, 5) * 1000, MAX_TIMER_MS);
    session.renewTimer = setTimeout(renew, renewMs);
  }

  async function renew() {
    try {
      await signIn();
    } catch (_) {
      // The service is away: the session is renewed, or signed in again, by the next call that needs it.
    }
  }

  // ---- the loop: watch the profile version, decide when it moved ----
  async function main() {
    for (;;) {
      try {
        if (cfg.tokens && !session) await signIn();
        const waiting = version !== null && !needDecide;
        poll = new AbortController();
        const query = new URLSearchParams({ customer_id: cfg.customer, since: version || "", wait: String(waiting) });
        const answer = await authed("GET", `/panel/v1/changes?${query}`, undefined, { signal: poll.signal });
        poll = null;
        if (answer.version !== version || needDecide) {
          needDecide = false;
          await decide(answer.version);
        }
        online();
      } catch (error) {
        poll = null;
        if (error.kind === "aborted") continue;
        if (error.kind === "denied" || error.kind === "notfound" || error.kind === "invalid") {
          stop(error);
          return;
        }
        if (error.kind === "auth") {
          session = null;
          if (!cfg.tokens) { stop(error); return; }
          continue;
        }
        await outage(error);
      }
    }
  }

  function kick() {
    if (poll) poll.abort();
  }

  async function decide(seen) {
    const request = {
      customer_id: cfg.customer,
      channel: "AGENT_DESKTOP",
      max_actions: 3,
      context: { reason: "agent_panel", attributes: cfg.conversation ? { conversation_id: cfg.conversation } : {} },
    };
    const answer = await authed("POST", "/v1/decide", request);
    version = seen;
    render(answer);
    scheduleExpiry(answer.actions);
  }

  function scheduleExpiry(actions) {
    if (expiryTimer) clearTimeout(expiryTimer);
    expiryTimer = null;
    const ends = actions.map((a) => Date.parse(a.valid_until)).filter((t) => !Number.isNaN(t));
    if (!ends.length) return;
    const delay = Math.min(Math.max(Math.min(...ends) - Date.now() + 1000, 1000), MAX_TIMER_MS);
    expiryTimer = setTimeout(() => { needDecide = true; kick(); }, delay);
  }

  // ---- outages: say so, keep what is shown, retry with backoff, recover by ourselves ----
  async function outage(error) {
    failures += 1;
    const busy = error.kind === "busy";
    const seconds = busy
      ? Math.max(1, error.retryAfter)
      : Math.min(MAX_BACKOFF_S, 2 ** (failures - 1)) * (0.8 + Math.random() * 0.4);
    if (!offline) {
      offline = true;
      setButtons(false);
      showAlert(busy
        ? "The next-best-action service is busy. Outcomes cannot be recorded until it answers again."
        : "Cannot reach the next-best-action service. The actions shown may be out of date, and outcomes " +
          "cannot be recorded until it is back. Retrying automatically.", true);
    }
    ui.retryWhen.textContent = `Next try in ${Math.round(seconds)} s.`;
    await sleep(seconds * 1000);
  }

  function online() {
    failures = 0;
    if (!offline && ui.alert.hidden) return;
    const wasOffline = offline;
    offline = false;
    hideAlert();
    setButtons(true);
    if (wasOffline) announce("Connected to the service again.");
  }

  function stop(error) {
    const messages = {
      denied: `You may not see actions for this customer: ${error.message}.`,
      notfound: `Customer ${cfg.customer} is not known to the next-best-action service.`,
      invalid: `The panel's request was refused: ${error.message}.`,
      auth: `The panel could not sign in: ${error.message}.`,
    };
    ui.loading.hidden = true;
    showAlert(messages[error.kind] || error.message, false);
  }

  function sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); wake = null; resolve(); }
      wake = done;
    });
  }

  ui.retry.addEventListener("click", () => { if (wake) wake(); });

  function showAlert(text, retrying) {
    ui.alert.hidden = false;
    ui.retryLine.hidden = !retrying;
    if (ui.alertText.textContent !== text) ui.alertText.textContent = text;
  }

  function hideAlert() {
    ui.alert.hidden = true;
    ui.alertText.textContent = "";
    ui.retryWhen.textContent = "";
  }

  function announce(text) {
    // Cleared first, so that the same words twice are read twice.
    ui.status.textContent = "";
    window.setTimeout(() => { ui.status.textContent = text; }, 50);
  }

  function setButtons(enabled) {
    for (const button of ui.list.querySelectorAll("button")) button.disabled = !enabled;
  }

  // ---- rendering: title, script and the three buttons; never any trigger data ----
  function render(answer) {
    const before = decision ? new Set(decision.actions.map((a) => a.action_id)) : null;
    const focused = focusedAction();
    decision = answer;
    const set = new Set(answer.actions.map((a) => a.action_id));
    memory.later = memory.later.filter((id) => set.has(id));
    saveMemory();
    const shown = answer.actions.filter((a) => !memory.later.includes(a.action_id));
    const fresh = before ? shown.filter((a) => !before.has(a.action_id)) : [];

    ui.loading.hidden = true;
    ui.list.replaceChildren(...shown.map((a) => card(a, fresh.includes(a))));
    ui.empty.hidden = shown.length > 0;
    renderLater();
    renderDone();
    if (offline) setButtons(false);

    if (focused) restoreFocus(focused);
    if (fresh.length) announce(`New: ${fresh.map((a) => a.title).join("; ")}.`);
    else if (!before) announce(shown.length ? `${shown.length} ${shown.length === 1 ? "action" : "actions"}.` : "Nothing to offer right now.");
  }

  function card(action, fresh) {
    const id = `nba-title-${action.action_id}`;
    const item = el("li", { className: fresh ? "card new" : "card" });
    item.dataset.action = action.action_id;
    const heading = el("h2", { id, tabIndex: -1, textContent: action.title });
    if (fresh) heading.append(el("span", { className: "badge", textContent: "New" }));
    // A regulatory notice: it ranks first and the agent cannot put it off for later.
    if (action.mandatory) heading.append(el("span", { className: "badge required", textContent: "Required notice" }));
    const script = el("p", { className: "script", textContent: action.script });
    const buttons = el("div", { className: "buttons" });
    buttons.setAttribute("role", "group");
    buttons.setAttribute("aria-labelledby", id);
    buttons.append(
      button(action.accept_label, "accept", () => record(action, "ACCEPTED", action.accept_label)),
      button(action.decline_label, "decline", () => record(action, "DECLINED", action.decline_label)),
    );
    if (!action.mandatory) {
      buttons.append(button("Not now", "secondary later-button", () => record(action, "NOT_OFFERED", "Not now")));
    }
    item.append(heading, script, buttons);
    return item;
  }

  function renderLater() {
    const items = decision ? decision.actions.filter((a) => memory.later.includes(a.action_id)) : [];
    ui.later.hidden = items.length === 0;
    ui.laterList.replaceChildren(...items.map((action) => {
      const item = el("li", { textContent: action.title });
      const again = button("Show again", "secondary", () => showAgain(action));
      again.setAttribute("aria-label", `Show again: ${action.title}`);
      item.append(again);
      return item;
    }));
  }

  function renderDone() {
    ui.done.hidden = memory.done.length === 0;
    ui.doneList.replaceChildren(...memory.done.map((entry) => {
      const item = el("li");
      item.append(el("span", { className: "outcome", textContent: `${entry.outcome}: ` }), entry.title);
      return item;
    }));
  }

  function el(tag, props = {}) {
    return Object.assign(document.createElement(tag), props);
  }

  function button(text, className, onClick) {
    const b = el("button", { type: "button", className, textContent: text });
    b.addEventListener("click", onClick);
    return b;
  }

  function focusedAction() {
    const active = document.activeElement;
    const item = active && active.closest ? active.closest("li.card") : null;
    if (!item) return null;
    return { action: item.dataset.action, className: active.tagName === "BUTTON" ? active.className : null };
  }

  function restoreFocus(focused) {
    const item = ui.list.querySelector(`li.card[data-action="${CSS.escape(focused.action)}"]`);
    if (item && focused.className) {
      const same = [...item.querySelectorAll("button")].find((b) => b.className === focused.className);
      if (same) { same.focus(); return; }
    }
    focusCard(item || ui.list.querySelector("li.card"));
  }

  function focusCard(item) {
    const heading = item ? item.querySelector("h2") : null;
    if (heading) heading.focus();
    else if (!ui.empty.hidden) focusEmpty();
  }

  function focusEmpty() {
    ui.empty.tabIndex = -1;
    ui.empty.focus();
  }

  async function record(action, outcome, label) {
    const item = ui.list.querySelector(`li.card[data-action="${CSS.escape(action.action_id)}"]`);
    const buttons = item ? [...item.querySelectorAll("button")] : [];
    for (const b of buttons) b.disabled = true;
    const note = cfg.conversation ? `agent panel, conversation ${cfg.conversation}` : "agent panel";
    try {
      await authed("POST", "/v1/outcomes", {
        decision_id: decision.decision_id, action_id: action.action_id, outcome, note,
      });
    } catch (error) {
      for (const b of buttons) b.disabled = offline;
      if (error.kind === "network" || error.kind === "busy") {
        showAlert(`Not recorded: the service cannot be reached. Try "${label}" again when it is back.`, true);
        kick(); // the loop notices the outage and recovers by itself
      } else {
        announce(`Not recorded: ${error.message}.`);
      }
      return;
    }
    if (outcome === "NOT_OFFERED") memory.later.push(action.action_id);
    else memory.done.push({ title: action.title, outcome: OUTCOME_WORDS[outcome] || label });
    saveMemory();
    const next = item ? item.nextElementSibling || item.previousElementSibling : null;
    if (item) item.remove();
    ui.empty.hidden = ui.list.children.length > 0;
    renderLater();
    renderDone();
    focusCard(next);
    announce(`Recorded: ${label}, ${action.title}.`);
    kick(); // the outcome changed the profile: the next decision honours it (caps)
  }

  function showAgain(action) {
    memory.later = memory.later.filter((id) => id !== action.action_id);
    saveMemory();
    const position = decision.actions.filter((a) => !memory.later.includes(a.action_id));
    ui.list.replaceChildren(...position.map((a) => card(a, false)));
    ui.empty.hidden = position.length > 0;
    renderLater();
    if (offline) setButtons(false);
    focusCard(ui.list.querySelector(`li.card[data-action="${CSS.escape(action.action_id)}"]`));
  }

  main();
})();
