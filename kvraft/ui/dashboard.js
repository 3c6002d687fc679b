// The kvraft dashboard: plain JavaScript, no libraries. Every member is asked directly
// (its /v1/status polled, its /v1/events followed), so the page outlives the node that
// served it. Each node card carries data-node-id and data-role (leader, follower, candidate,
// learner, down) for tests and scripts.
//
// While the cluster has auth enabled, /v1/events answers 401 without a bearer token (its
// /v1/status stays open): the page then shows a sign-in form, gets a token from the node
// that served it (POST /v1/auth/token) and sends it to every member. EventSource cannot send
// an Authorization header, so events are read with fetch() and a small SSE parser instead.
"use strict";

const POLL_INTERVAL_MS = 500;      // how often each member's status is asked for
const STATUS_TIMEOUT_MS = 1500;    // a member that does not answer within this is down
const EVENTS_REOPEN_MS = 1000;     // a closed event stream is reopened after this
const RECENT_EVENTS_MAX = 200;     // events listed under "Recent events"
const SPARK_POINTS_MAX = 40;       // commit-rate samples per node's sparkline
const SEEN_EVENTS_MAX = 5000;      // event keys remembered to drop duplicates after reconnects

const members = new Map();  // id -> {id, base, voter, status, up, stream, lastEventId, spark}; stream: its AbortController
const terms = new Map();    // term -> {term, leaderId, time, noLeaderMs, reporter}
const marks = [];           // {kind: "down"|"up", nodeId, time}: what this page saw
const causes = [];          // {time, text}: events that can explain a failover
const recent = [];
const seen = new Set();
let membership = {voters: [], learners: [], pending: false};

const $ = (id) => document.getElementById(id);
const escapeText = (text) => String(text).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const nowS = () => Date.now() / 1000;
const clock = (timeS) => new Date(timeS * 1000).toLocaleTimeString([], {hour12: false});

function roleOf(member) {
  if (!member.up || !member.status) return "down";
  const role = member.status.role;
  if (role === "leader" || role === "follower" || role === "candidate" || role === "learner") return role;
  return "learner";  // non_member: joining, not yet in a configuration
}

function learnMembers(status, servedBy) {
  for (const item of status.members || []) {
    let member = members.get(item.id);
    if (!member) {
      // The page's own node is reached the way the page was: its http_address may be one
      // the browser cannot use (0.0.0.0, a container's name).
      // Every member serves the scheme this page came by (a cluster's [tls] is all or none).
      const base = servedBy && item.id === status.id ? location.origin : location.protocol + "//" + item.http_address;
      member = {id: item.id, base, voter: item.voter, status: null, up: null, stream: null, lastEventId: 0, spark: []};
      members.set(item.id, member);
      follow(member);
    }
    member.voter = item.voter;
  }
}

async function fetchStatus(base) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), STATUS_TIMEOUT_MS);
  try {
    const answer = await fetch(base + "/v1/status", {signal: controller.signal, cache: "no-store"});
    if (!answer.ok) throw new Error("status " + answer.status);
    return await answer.json();
  } finally {
    clearTimeout(timer);
  }
}

async function pollMember(member) {
  try {
    const status = await fetchStatus(member.base);
    if (member.up === false) marks.push({kind: "up", nodeId: member.id, time: nowS()});
    member.up = true;
    member.status = status;
  } catch (error) {
    if (member.up === true) marks.push({kind: "down", nodeId: member.id, time: nowS()});
    member.up = false;
  }
}

async function poll() {
  if (members.size === 0) {
    try {
      learnMembers(await fetchStatus(location.origin), true);
    } catch (error) {
      $("summary").textContent = "Cannot reach the node that served this page; retrying…";
    }
  }
  await Promise.all([...members.values()].map(pollMember));
  // The membership as the leader (else any member that is up) sees it.
  const up = [...members.values()].filter((m) => m.up && m.status);
  const source = up.find((m) => m.status.role === "leader") || up[0];
  if (source) {
    learnMembers(source.status, false);
    const listed = new Set((source.status.members || []).map((m) => m.id));
    if (listed.size) {
      for (const id of [...members.keys()]) {
        if (!listed.has(id)) { unfollow(members.get(id)); members.delete(id); }
      }
    }
    membership = {
      voters: (source.status.members || []).filter((m) => m.voter).map((m) => m.id),
      learners: (source.status.members || []).filter((m) => !m.voter).map((m) => m.id),
      pending: !!source.status.membership_change_pending,
    };
  }
  render();
}

// --- Following each member's events ---------------------------------------------------

function follow(member) {
  const controller = new AbortController();
  member.stream = controller;
  readEvents(member, controller.signal);
}

function unfollow(member) {
  if (member && member.stream) member.stream.abort();
}

// Waits `ms`, or less when `signal` aborts. The abort listener goes when the wait ends: a
// member down for hours is retried every second on the same signal.
function pause(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, {once: true});
  });
}

// Follows one member's /v1/events until `signal` aborts (the member left, or the page signed
// out and starts again): reconnects every EVENTS_REOPEN_MS while the member is down, resuming
// after the last event id it sent (?since=, as EventSource's Last-Event-ID would; a node that
// restarted numbers from 1 again and sends everything it has, and `seen` drops repeats).
async function readEvents(member, signal) {
  while (!signal.aborted) {
    const token = currentToken();
    const headers = {Accept: "text/event-stream"};
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const answer = await fetch(`${member.base}/v1/events?since=${member.lastEventId}`, {headers, signal, cache: "no-store"});
      if (answer.status === 401) {
        const body = await answer.json().catch(() => ({}));
        needSignIn(token, body.message);
        await untilTokenChanges(token, signal);  // not every second: the user has to act
        continue;
      }
      if (answer.ok && answer.body) {
        await readSse(answer.body, (data, id) => {
          try { onEvent(JSON.parse(data)); } catch (error) { /* a malformed event: skip */ }
          if (/^\d+$/.test(id)) member.lastEventId = Number(id);
        });
      }
    } catch (error) {
      // Unreachable (down, restarting), the connection cut, or aborted: the loop decides.
    }
    await pause(EVENTS_REOPEN_MS, signal);
  }
}

// Reads a Server-Sent Events body until it ends, calling onMessage(data, id) per event: the
// part of the format /v1/events uses ("data:" and "id:" fields, ":" comments, "retry:"
// ignored: the reconnect delay is ours), where a blank line ends an event.
async function readSse(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let id = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();  // an unfinished line waits for the next chunk
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) onMessage(data.join("\n"), id);
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;  // a keepalive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") data.push(text);
      else if (field === "id") id = text;
    }
  }
}

// --- Signing in ------------------------------------------------------------------------
// The token is kept in sessionStorage only: it goes when the tab closes, it is never put in
// a URL (where history and access logs would keep it), and never logged.

const TOKEN_KEY = "kvraft-dashboard-token";
const USER_KEY = "kvraft-dashboard-user";
let tokenWaiters = [];  // streams paused on a 401 until the token changes

const currentToken = () => sessionStorage.getItem(TOKEN_KEY);

// Resolves when the token is no longer `token` (signed in, out, or dropped), or on abort.
function untilTokenChanges(token, signal) {
  if (currentToken() !== token || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    tokenWaiters.push(resolve);
    signal.addEventListener("abort", resolve, {once: true});
  });
}

function tokenChanged() {
  const waiting = tokenWaiters;
  tokenWaiters = [];
  for (const resolve of waiting) resolve();
}

function showSignIn(error) {
  $("signin").hidden = false;
  $("signed-in").hidden = true;
  $("signin-error").textContent = error || "";
}

function showSignedIn() {
  $("signin").hidden = true;
  $("signin-error").textContent = "";
  $("signed-in-as").textContent = `Signed in as ${sessionStorage.getItem(USER_KEY) || "?"}.`;
  $("signed-in").hidden = false;
}

// A member refused the stream with 401 after it was sent `token` (null: none).
function needSignIn(token, message) {
  if (token === null) {
    if (currentToken() === null && $("signin").hidden) showSignIn("");
    return;
  }
  if (currentToken() !== token) return;  // an older token: the new one is tried next
  // Expired, or its user was deleted or changed password: of no more use anywhere.
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  // The server's message ends with what an API client should do ("get a new one from
  // POST /v1/auth/token"): the form below is this page's way, so that clause is left out.
  const reason = (message || "").split(": ").filter((part) => !part.includes("/v1/")).join(": ");
  showSignIn(`Signed out: ${reason || "the cluster no longer accepts this sign-in"}. Sign in again.`);
  tokenChanged();
}

// Every stream starts again, with the current token or without: one signed out must not
// keep reading through connections opened with the old token.
function restartStreams() {
  for (const member of members.values()) {
    unfollow(member);
    follow(member);
  }
}

async function signIn(event) {
  event.preventDefault();
  const user = $("signin-user").value;
  const password = $("signin-password").value;
  $("signin-submit").disabled = true;
  $("signin-error").textContent = "";
  try {
    // The node that served this page: the page's own origin, no CORS.
    const answer = await fetch(location.origin + "/v1/auth/token", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({user, password}), cache: "no-store"});
    const body = await answer.json().catch(() => ({}));
    if (answer.ok && typeof body.token === "string") {
      sessionStorage.setItem(TOKEN_KEY, body.token);
      sessionStorage.setItem(USER_KEY, user);
      showSignedIn();
      $("signout").focus();  // the focused button was hidden with the form
      tokenChanged();
    } else {
      // 401 wrong user name or password, 429 too many attempts, 409 auth disabled: the
      // server's own words.
      $("signin-error").textContent = body.message || `Sign-in failed (HTTP ${answer.status}).`;
      $("signin-password").focus();
    }
  } catch (error) {
    $("signin-error").textContent = "Cannot reach the node that served this page; try again.";
  } finally {
    $("signin-password").value = "";
    $("signin-submit").disabled = false;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  showSignIn("");
  $("signin-user").focus();
  restartStreams();
}

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
if (currentToken() !== null) showSignedIn();  // a reload in the same tab keeps the sign-in

function onEvent(event) {
  const key = event.node_id + ":" + event.seq + ":" + event.time;
  if (seen.has(key)) return;
  seen.add(key);
  if (seen.size > SEEN_EVENTS_MAX) seen.delete(seen.values().next().value);
  recent.push(event);
  if (recent.length > RECENT_EVENTS_MAX) recent.shift();
  const fields = event.fields || {};
  switch (event.type) {
    case "leader_elected": {
      let entry = terms.get(event.term);
      if (!entry) {
        entry = {term: event.term, leaderId: fields.leader_id, time: event.time, noLeaderMs: 0, reporter: event.node_id};
        terms.set(event.term, entry);
      }
      entry.time = Math.min(entry.time, event.time);
      if (fields.no_leader_ms > entry.noLeaderMs) {
        entry.noLeaderMs = fields.no_leader_ms;
        entry.reporter = event.node_id;
      }
      break;
    }
    case "leader_lost":
      causes.push({time: event.time, text: `node ${event.node_id} lost leader ${fields.leader_id} (silent ${Math.round(fields.silent_ms)} ms)`});
      break;
    case "peer_disconnected":
      causes.push({time: event.time, text: `node ${event.node_id}: peer ${fields.peer_id} unreachable (${fields.reason})`});
      break;
    case "leadership_transfer":
      causes.push({time: event.time, text: `leadership transfer to node ${fields.to}`});
      break;
    case "fail_stop":
      causes.push({time: event.time, text: `node ${event.node_id} stopped: disk failed`});
      break;
    case "progress": {
      const member = members.get(event.node_id);
      if (member) {
        member.spark.push(fields.commits_per_s || 0);
        if (member.spark.length > SPARK_POINTS_MAX) member.spark.shift();
      }
      break;
    }
  }
}

function sparkline(points) {
  if (points.length < 2) return "";
  const highest = Math.max(1, ...points);
  const step = 100 / (SPARK_POINTS_MAX - 1);
  const coordinates = points.map((value, i) => `${(i * step).toFixed(1)},${(28 - (value / highest) * 26).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 100 28" preserveAspectRatio="none" role="img" aria-label="commits per second, latest ${points[points.length - 1]}"><polyline points="${coordinates}"/></svg>`;
}

function renderCard(member, element) {
  const role = roleOf(member);
  const status = member.status || {};
  element.dataset.nodeId = String(member.id);
  element.dataset.role = role;
  const lastLog = status.last_log_index ?? "–";
  let bars = "";
  if (role === "leader" && Array.isArray(status.members)) {
    const top = Math.max(1, status.last_log_index || 1);
    bars = '<div class="bars">' + status.members.filter((m) => m.id !== member.id).map((m) =>
      `<div class="bar"><span>node ${m.id}</span><meter min="0" max="${top}" value="${m.match_index || 0}" title="match index ${m.match_index || 0} of ${top}">${m.match_index || 0}</meter></div>`).join("") + "</div>";
  }
  const up = member.up ? "up" : (member.up === false ? "down" : "?");
  element.setAttribute("aria-label", `node ${member.id}: ${role}, term ${status.term ?? "unknown"}, ${up}`);
  element.innerHTML =
    `<h3><span>node ${member.id}${member.voter === false ? " (learner)" : ""}</span><span class="role">${role}</span></h3>` +
    `<dl><dt>term</dt><dd>${status.term ?? "–"}</dd>` +
    `<dt>last / commit / applied</dt><dd>${lastLog} / ${status.commit_index ?? "–"} / ${status.applied_index ?? "–"}</dd>` +
    `<dt>state</dt><dd>${up}${member.up === false && status.term !== undefined ? " (last seen above)" : ""}</dd>` +
    `<dt>address</dt><dd>${escapeText(member.base.replace(/^https?:\/\//, ""))}</dd></dl>` +
    bars + sparkline(member.spark);
}

function renderNodes() {
  const list = $("nodes");
  const existing = new Map([...list.children].map((li) => [li.dataset.nodeId, li]));
  const ids = [...members.keys()].sort((a, b) => a - b);
  for (const id of ids) {
    let element = existing.get(String(id));
    if (!element) {
      element = document.createElement("li");
      element.className = "node";
      element.tabIndex = 0;
      list.appendChild(element);
    }
    existing.delete(String(id));
    renderCard(members.get(id), element);
  }
  for (const element of existing.values()) element.remove();
}

function renderTimeline() {
  const ordered = [...terms.values()].sort((a, b) => a.term - b.term);
  const items = [];
  let previous = null;
  for (const entry of ordered) {
    const since = previous ? previous.time : 0;
    const why = causes.filter((c) => c.time > since && c.time <= entry.time + 0.001).map((c) => c.text);
    for (const mark of marks) {
      if (previous && mark.kind === "down" && mark.nodeId === previous.leaderId && mark.time > since && mark.time <= entry.time + 1) {
        why.unshift(`node ${mark.nodeId} (the leader) went down`);
      }
    }
    items.push({time: entry.time, html:
      `<li class="${previous ? "failover" : "election"}" data-term="${entry.term}" data-leader-id="${entry.leaderId}"` +
      ` data-previous-leader-id="${previous ? previous.leaderId : 0}" data-unavailable-ms="${Math.round(entry.noLeaderMs)}">` +
      `<time>${clock(entry.time)}</time> term ${entry.term}: node ${entry.leaderId} leads` +
      (previous ? ` (was node ${previous.leaderId}) · no leader for <span class="ms">${Math.round(entry.noLeaderMs)} ms</span> as node ${entry.reporter} saw it`
                : ` · first leader seen`) +
      [...new Set(why)].slice(0, 4).map((text) => `<span class="cause">${escapeText(text)}</span>`).join("") + "</li>"});
    previous = entry;
  }
  for (const mark of marks) {
    items.push({time: mark.time, html: `<li class="${mark.kind}" data-node-id="${mark.nodeId}"><time>${clock(mark.time)}</time> node ${mark.nodeId} ${mark.kind === "down" ? "stopped answering" : "is back"}</li>`});
  }
  items.sort((a, b) => b.time - a.time);
  const html = items.map((i) => i.html).join("");
  if ($("timeline").innerHTML !== html) $("timeline").innerHTML = html;
}

function renderMembership() {
  const list = (ids) => ids.length ? ids.map((id) => `node ${id}`).join(", ") : "none";
  $("membership").innerHTML =
    `<dt>voters</dt><dd>${list(membership.voters)}</dd>` +
    `<dt>learners</dt><dd>${list(membership.learners)}</dd>` +
    `<dt>change in progress</dt><dd>${membership.pending ? "yes" : "no"}</dd>`;
}

function renderEvents() {
  const html = recent.slice(-50).reverse().map((e) =>
    `<li>${clock(e.time)} n${e.node_id} t${e.term} ${escapeText(e.type)} ${escapeText(JSON.stringify(e.fields))}</li>`).join("");
  if ($("events").innerHTML !== html) $("events").innerHTML = html;
}

function render() {
  renderNodes();
  renderTimeline();
  renderMembership();
  renderEvents();
  const all = [...members.values()];
  const leader = all.find((m) => roleOf(m) === "leader");
  const upCount = all.filter((m) => m.up).length;
  $("summary").textContent = leader
    ? `Leader: node ${leader.id} · term ${leader.status.term} · ${upCount}/${all.length} nodes up`
    : `No leader right now · ${upCount}/${all.length} nodes up`;
}

async function loop() {
  for (;;) {
    const started = Date.now();
    try { await poll(); } catch (error) { /* the next round tries again */ }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, POLL_INTERVAL_MS - (Date.now() - started))));
  }
}

loop();
