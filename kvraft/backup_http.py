"""`GET /v1/backup`: the leader streams a consistent backup (format: `kvraft.backup`).

The leader confirms its leadership first (ReadIndex, as a linearizable read does), then
captures the state machine's snapshot, its revision and the membership in one event-loop
step, so the backup holds every write acknowledged before the request and nothing half
applied. The snapshot is encoded on a worker thread one chunk at a time (it works on its own
copy, so the node keeps applying meanwhile) and written as it is made: the response's
backpressure bounds what is held to about one chunk.

A follower does not forward a backup (a forwarding node reads the leader's whole answer
before it answers, and a backup can be as large as the data): it redirects with 307 to the
leader's `/v1/backup`. `curl -L` and the client follow it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from aiohttp import web

from kvraft import __version__
from kvraft.backup import BackupHeader, BackupWriter
from kvraft.server import RaftNode

__all__ = ["BACKUP_CONTENT_TYPE", "BACKUP_PATH", "leader_redirect", "stream_backup"]

BACKUP_PATH = "/v1/backup"
BACKUP_CONTENT_TYPE = "application/vnd.kvraft.backup"


def leader_redirect(node: RaftNode, leader_id: int) -> web.Response | None:
    """A 307 to the leader's `/v1/backup`, or None when its address is not known."""
    leader = node.peer_addresses.get(leader_id) if leader_id else None
    if leader is None or leader_id == node.id:
        return None
    return web.Response(
        status=307,
        headers={
            "Location": leader.base_url(node.tls.http_scheme) + BACKUP_PATH,
            "X-Kvraft-Leader-Id": str(leader_id),
        },
        content_type="application/json",
        text=f'{{"error": "not_leader", "message": "backups are served by the leader, node '
        f'{leader_id}", "leader_id": {leader_id}}}',
    )


def _header_now(node: RaftNode) -> BackupHeader:
    core = node.core
    assert core is not None
    configuration = core.log.configuration()
    addresses = node.peer_addresses
    members = tuple(
        {
            "id": member_id,
            "raft_address": addresses[member_id].raft_address,
            "http_address": addresses[member_id].http_address,
        }
        for member_id in sorted(configuration.members)
        if member_id in addresses
    )
    machine = node.state_machine
    return BackupHeader(
        cluster_id=node.config.cluster_id,
        node_id=node.id,
        revision=machine.applied_index,
        keys=len(machine),
        voters=tuple(sorted(configuration.voters)),
        learners=tuple(sorted(configuration.learners)),
        members=members,
        kvraft_version=__version__,
        created_unix_s=time.time(),
    )


async def stream_backup(node: RaftNode, request: web.BaseRequest) -> web.StreamResponse:
    """Stream the backup; the caller has confirmed leadership just before (read barrier)."""
    # One synchronous step: the header's revision, key count and membership describe exactly
    # the state `snapshot_chunks` captures.
    header = _header_now(node)
    chunks: Iterator[bytes] = node.state_machine.snapshot_chunks()
    writer = BackupWriter(header)
    name = f"kvraft-{header.cluster_id}-{header.revision}.kvbackup"
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": BACKUP_CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Kvraft-Revision": str(header.revision),
            "X-Kvraft-Node-Id": str(node.id),
        },
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(writer.start())
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            for record in writer.data(chunk):
                await response.write(record)
        await response.write(writer.end())
        await response.write_eof()
    finally:
        # On a client gone mid-stream, write raises: drop the snapshot copy now.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return response
