// The kvraft dashboard: plain JavaScript, no libraries. Every member is asked directly
// (its /v1/status polled, its /v1/events followed), so the page outlives the node that
// served it. Each node card carries data-node-id and data-role (leader, follower, candidate,
// learner, down) for tests and scripts.
"use strict";

const POLL_INTERVAL_MS = 500;      // how often each member's status is asked for
const STATUS_TIMEOUT_MS = 1500;    // a member that does not answer within this is down
const EVENTS_REOPEN_MS = 1000;     // a closed event stream is reopened after this
const RECENT_EVENTS_MAX = 200;     // events listed under "Recent events"
const SPARK_POINTS_MAX = 40;       // commit-rate samples per node's sparkline
const SEEN_EVENTS_MAX = 5000;      // event keys remembered to drop duplicates after reconnects

const members = new Map();  // id -> {id, base, voter, status, up, streams, spark}
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
      member = {id: item.id, base, voter: item.voter, status: null, up: null, streams: null, spark: []};
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

function follow(member) {
  const source = new EventSource(member.base + "/v1/events?since=0");
  member.streams = source;
  source.onmessage = (message) => {
    try { onEvent(JSON.parse(message.data)); } catch (error) { /* a malformed line: skip */ }
  };
  source.onerror = () => {
    // The browser reconnects by itself unless the stream was closed for good.
    if (source.readyState === EventSource.CLOSED && members.get(member.id) === member) {
      setTimeout(() => { if (members.get(member.id) === member) follow(member); }, EVENTS_REOPEN_MS);
    }
  };
}

function unfollow(member) {
  if (member && member.streams) member.streams.close();
}

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
