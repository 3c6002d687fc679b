"""The event stream (`kvraft.events`, `GET /v1/events`, `kvraft events`): the ring alone, then
real node processes on 127.0.0.1 living through the loss of their leader."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvraft.config import render_config
from kvraft.events import EventLog
from tests.cluster_harness import Cluster, http, running, wait_for

EVENTS_KEPT_MAX_SMALL = 8
"""The ring of the nodes under test: small, so a few writes push a reader behind it."""


# --- the ring --------------------------------------------------------------------------------


def test_a_reader_behind_the_ring_gets_lagged_then_resumes_at_the_oldest_kept() -> None:
    events = EventLog(1, capacity=3, wall_clock=lambda: 100.0)
    for index in range(5):
        events.emit("progress", 1, commit_index=index)
    assert len(events) == 3
    lagged, *rest = events.read(0)
    assert (lagged.type, lagged.fields, lagged.seq) == ("lagged", {"missed_events": 2}, 2)
    assert [event.seq for event in rest] == [3, 4, 5]
    assert events.read(lagged.seq) == rest  # resuming after the lagged event misses nothing
    assert events.read(5) == []


def test_a_sequence_number_from_before_a_restart_reads_everything_kept() -> None:
    events = EventLog(1, capacity=10)
    events.emit("node_started", 0)
    assert [event.seq for event in events.read(57)] == [1]


# --- real nodes ------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3)
    yield from running(nodes)


@pytest.fixture
def small_ring_cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3)
    limits = replace(nodes.config.limits, events_kept_max=EVENTS_KEPT_MAX_SMALL)
    nodes.config = replace(nodes.config, limits=limits)
    nodes.config_path.write_text(render_config(nodes.config))
    yield from running(nodes)


def read_events(cluster: Cluster, node_id: int, since: int = 0) -> list[dict[str, Any]]:
    answer = http(
        "GET",
        f"{cluster.url(node_id)}/v1/events?since={since}&follow=0",
        headers={"Accept": "application/x-ndjson"},
    )
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.body.splitlines() if line.strip()]


def is_election_of(event: dict[str, Any], leader_id: int) -> bool:
    return event["type"] == "leader_elected" and event["fields"]["leader_id"] == leader_id


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_every_survivor_tells_the_election_after_the_leader_is_killed(cluster: Cluster) -> None:
    old_leader = cluster.leader()
    survivors = [node_id for node_id in (1, 2, 3) if node_id != old_leader]
    seen_before = {node_id: read_events(cluster, node_id)[-1]["seq"] for node_id in survivors}
    cluster.kill(old_leader)
    new_leader = cluster.leader(among=survivors)
    assert new_leader != old_leader

    def elected_everywhere() -> dict[int, list[dict[str, Any]]] | None:
        stories = {
            node_id: read_events(cluster, node_id, seen_before[node_id]) for node_id in survivors
        }
        done = all(any(is_election_of(e, new_leader) for e in story) for story in stories.values())
        return stories if done else None

    stories = wait_for(elected_everywhere, what="leader_elected on every survivor")
    for node_id, story in stories.items():
        for event in story:
            assert event["node_id"] == node_id
            assert event["time"] > 0 and event["term"] >= 1
        kinds = types_of(story)
        assert "leader_lost" in kinds, (node_id, kinds)
        elected = next(
            e
            for e in story
            if e["type"] == "leader_elected" and e["fields"]["leader_id"] == new_leader
        )
        # The leader was gone at least until an election timeout noticed it.
        assert elected["fields"]["no_leader_ms"] > 0, elected
        assert kinds.index("leader_lost") < story.index(elected), kinds
        assert [e["seq"] for e in story] == sorted(e["seq"] for e in story)
        if node_id == new_leader:
            # It stood: an election (PreVote first), then leadership, in that order.
            roles = [e["fields"]["to"] for e in story if e["type"] == "role_changed"]
            assert "candidate" in roles and roles[-1] == "leader", roles
            started = kinds.index("election_started")
            assert started < story.index(elected), kinds
        else:
            assert "vote_granted" in kinds or "election_started" in kinds, kinds
        disconnected = [
            e
            for e in story
            if e["type"] == "peer_disconnected" and e["fields"]["peer_id"] == old_leader
        ]
        assert disconnected and disconnected[0]["fields"]["reason"], story


def test_a_reader_that_fell_behind_gets_lagged_and_the_ring_stays_bounded(
    small_ring_cluster: Cluster,
) -> None:
    cluster = small_ring_cluster
    observed = 1

    def ring_wrapped_three_times() -> bool:
        # Each leadership transfer is a handful of events on every node.
        leader = cluster.leader()
        target = 1 + leader % 3
        cluster.request(leader, "POST", "/v1/leader/transfer", json.dumps({"to": target}).encode())
        return bool(read_events(cluster, observed)[-1]["seq"] > 3 * EVENTS_KEPT_MAX_SMALL)

    wait_for(ring_wrapped_three_times, what="the ring to wrap")
    # A reader that last saw event 1: the node has long dropped what followed it.
    lagged, *rest = read_events(cluster, observed, since=1)
    assert lagged["type"] == "lagged", lagged
    assert lagged["fields"]["missed_events"] == rest[0]["seq"] - 2
    assert [e["seq"] for e in rest] == list(range(rest[0]["seq"], rest[0]["seq"] + len(rest)))
    assert len(rest) <= EVENTS_KEPT_MAX_SMALL
    status = cluster.status(observed)
    assert status["events_kept"] <= EVENTS_KEPT_MAX_SMALL
    # The same over Server-Sent Events, resuming with Last-Event-ID as a browser does.
    request = urllib.request.Request(
        f"{cluster.url(observed)}/v1/events?follow=0",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "1"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        text = answer.read().decode()
    frames = [frame for frame in text.split("\n\n") if frame.startswith("id:")]
    first_id, first_data = frames[0].split("\n")[:2]
    assert json.loads(first_data.removeprefix("data: "))["type"] == "lagged"
    assert first_id == f"id: {lagged['seq']}"


def test_kvraft_events_prints_every_members_events_merged(cluster: Cluster) -> None:
    leader = cluster.leader()
    command = [sys.executable, "-m", "kvraft", "events", "--json", "--endpoints", cluster.url(1)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    events = [json.loads(line) for line in output.stdout.splitlines()]
    assert {e["node_id"] for e in events} == {1, 2, 3}
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert any(is_election_of(e, leader) for e in events)
    text = subprocess.run(
        command[:4] + command[5:], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert f"leader_elected leader_id={leader}" in text


def test_a_members_dashboard_page_may_read_the_others_over_http_or_https() -> None:
    # A cluster with [tls] serves its dashboard over HTTPS, and the page asks every member.
    from kvraft.ui import origin_allowed

    members = ["127.0.0.1:8001", "node2:8002"]
    assert origin_allowed("http://127.0.0.1:8001", members)
    assert origin_allowed("https://localhost:8001", members)
    assert origin_allowed("https://node2:8002", members)
    assert not origin_allowed("https://127.0.0.1:9001", members)  # not a member's port
    assert not origin_allowed("ftp://127.0.0.1:8001", members)
