"""Where each member of the cluster can be reached, as one node knows it, and which peers
its transport may talk to.

Theory of operation. The Raft core knows members only by id; where to reach them travels in
the log with the members themselves (`kvraft.membership`: every configuration entry carries
the address book in its context). A configuration is in force once appended, committed or
not (§4.1), so before each Ready is handled the node hands the latest configuration in its
log to `AddressBook.follow_configuration`, and the new peers are known before the Ready's
messages to them go out. The bootstrap configuration has no context: its addresses come from
the cluster's config file, which stays authoritative until the first change.

The book keeps three sources apart:

- the log's book: the addresses of the latest configuration in the log, the authority for
  every id it names;
- the provisional book: addresses learned outside the log (the join answer, a look-up) for
  ids the log does not name yet. A joining node must reach the leader before its log can say
  who the leader is; an id drops out of it as soon as the log names it, or removes it;
- the file's book: the config file's nodes, for the bootstrap configuration (and, on a node
  that is not a founding member, the provisional addresses it starts with: where the
  cluster was, so the leader's first messages can be answered).

Their union (the log winning) is `AddressBook.addresses`, which the HTTP forwarding reads, and
the book tells the transport about every change to it: `set_peer_address` for a new or moved
peer, `remove_peer` for one that left. The transport asks `is_known_peer` before it accepts a
connection. A peer that dials in but is not known may be a member this node's log has not
reached yet (this node is behind): the book then asks the other members over HTTP
(``GET /v1/members``) where it is, so a lagging node can still follow a leader it has not heard
of. `kvraft.membership.LookupThrottle` says when: never for a node this node saw removed (a
removed node keeps dialling in until it notices, §4.2.3), and any other id at most once per
interval; one look-up runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import aiohttp

from kvraft.membership import (
    LookupThrottle,
    MemberAddress,
    MembershipError,
    address_book_of,
    parse_member,
)
from kvraft.raft.messages import Configuration

__all__ = ["LOOKUP_TIMEOUT_S", "AddressBook", "PeerDirectory"]

# The node's log lines keep the logger name they always had: the daemon's log format prints
# it, and operators filter on it.
log = logging.getLogger("kvraft.server")

LOOKUP_TIMEOUT_S = 2.0
"""How long one look-up of an unknown peer waits for a member's answer before asking the
next member (`kvraft.membership.LookupThrottle` says when to look up)."""


class PeerDirectory(Protocol):
    """What the address book tells the node's transport: which peers exist, and where."""

    def set_peer_address(self, node_id: int, host: str, port: int) -> None: ...

    def remove_peer(self, node_id: int) -> None: ...


class AddressBook:
    """One node's addresses of the other members, kept in step with its log."""

    def __init__(
        self,
        node_id: int,
        own_address: MemberAddress,
        file_book: Mapping[int, MemberAddress],
        *,
        founding: bool,
        is_stopping: Callable[[], bool],
        https_client: ssl.SSLContext | None = None,
    ) -> None:
        """The book of node `node_id` (at `own_address`), whose config file names the nodes
        of `file_book`. A `founding` node is one of them and starts from the file's
        configuration; any other starts knowing only where the cluster was. While
        `is_stopping()` holds, no look-up starts. With `https_client` (the cluster serves
        HTTPS), look-ups ask the members over HTTPS with that context."""
        self.node_id = node_id
        self._own_address = own_address
        self._is_stopping = is_stopping
        self._file_book = dict(file_book)
        self._log_book: dict[int, MemberAddress] = {}
        self._provisional_book: dict[int, MemberAddress] = {}
        if not founding:
            # A new node knows no configuration yet; the file's nodes (if any) are where the
            # cluster was, so the leader's first messages can be answered.
            self._provisional_book = {i: a for i, a in self._file_book.items() if i != node_id}
        self._configuration_seen: Configuration | None = None
        self._lookups = LookupThrottle()
        self._lookup_task: asyncio.Task[None] | None = None
        self._http_session: aiohttp.ClientSession | None = None
        self._https_client = https_client
        self._transport: PeerDirectory | None = None
        self._transport_addresses: dict[int, tuple[str, int]] = {}
        self.addresses: dict[int, MemberAddress] = dict(self._file_book)
        """Every peer this node can reach, and itself: replaced (never changed in place)
        whenever the book changes."""
        self.addresses[node_id] = own_address

    def attach_transport(self, transport: PeerDirectory) -> None:
        """From now on, tell `transport` which peers exist (from the next change on)."""
        self._transport = transport

    async def close(self) -> None:
        """Stop any look-up and close its HTTP session."""
        if self._lookup_task is not None:
            self._lookup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._lookup_task
        if self._http_session is not None:
            await self._http_session.close()

    def follow_configuration(self, configuration: Configuration) -> None:
        """Follow the latest configuration in the log: its addresses, who may connect."""
        if configuration is self._configuration_seen:
            return
        self._configuration_seen = configuration
        try:
            book = address_book_of(configuration, self._file_book)
        except MembershipError as error:
            # Only a faulty or hostile leader writes such an entry. Keep reaching the members
            # we can rather than stop: the entry is in the log either way.
            log.error("node %d: unusable address book in the log: %s", self.node_id, error)
            book = {
                node_id: address
                for node_id, address in self.addresses.items()
                if node_id in configuration.members
            }
        for node_id in self._log_book.keys() - book.keys():
            self._lookups.removed(node_id)
            self._provisional_book.pop(node_id, None)
        for node_id in book:
            self._lookups.rejoined(node_id)
            self._provisional_book.pop(node_id, None)  # the log is the authority now
        if book != self._log_book:
            log.info(
                "node %d: members %s (voters %s)",
                self.node_id,
                sorted(configuration.members),
                sorted(configuration.voters),
            )
        self._log_book = book
        self._apply_addresses()

    def learn_addresses(self, book: Mapping[int, MemberAddress]) -> None:
        """Addresses learned outside the log (a join answer, a look-up), used for ids the log
        does not name yet: the leader must be reachable before the log can say who it is."""
        for node_id, address in book.items():
            if node_id != self.node_id and node_id not in self._log_book:
                self._provisional_book[node_id] = address
        self._apply_addresses()

    def is_known_peer(self, node_id: int) -> bool:
        """Whether the transport may accept a connection from `node_id`. An unknown one is
        looked up in the background, in case this node's log is behind."""
        if node_id == self.node_id:
            return False
        if node_id in self.addresses:
            return True
        self._maybe_look_up(node_id)
        return False

    def _apply_addresses(self) -> None:
        addresses = {**self._provisional_book, **self._log_book}
        addresses[self.node_id] = addresses.get(self.node_id) or self._own_address
        self.addresses = addresses
        transport = self._transport
        if transport is None:
            return
        for node_id in list(self._transport_addresses):
            if node_id not in addresses:
                transport.remove_peer(node_id)
                del self._transport_addresses[node_id]
        for node_id, address in addresses.items():
            target = (address.raft_host, address.raft_port)
            if node_id != self.node_id and self._transport_addresses.get(node_id) != target:
                transport.set_peer_address(node_id, *target)
                self._transport_addresses[node_id] = target

    def _maybe_look_up(self, node_id: int) -> None:
        """A peer we do not know dialled in: maybe a member our log has not reached yet."""
        if self._is_stopping() or self._transport is None:
            return
        if self._lookup_task is not None and not self._lookup_task.done():
            return
        if not self._lookups.allow(node_id, time.monotonic()):
            return
        self._lookup_task = asyncio.create_task(self._look_up(node_id))

    async def _look_up(self, node_id: int) -> None:
        if self._http_session is None:
            connector = aiohttp.TCPConnector(ssl=self._https_client or True)
            self._http_session = aiohttp.ClientSession(connector=connector)
        scheme = "http" if self._https_client is None else "https"
        timeout = aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT_S)
        for asked in [a for i, a in sorted(self.addresses.items()) if i != self.node_id]:
            try:
                async with self._http_session.get(
                    asked.base_url(scheme) + "/v1/members", timeout=timeout
                ) as response:
                    if response.status != 200:
                        continue
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            found = _member_in_answer(body, node_id)
            if found is not None:
                if node_id not in self._log_book and not self._lookups.is_removed(node_id):
                    log.info(
                        "node %d: learned from node %d that node %d is a member at %s",
                        self.node_id,
                        asked.id,
                        node_id,
                        found.raft_address,
                    )
                    self.learn_addresses({node_id: found})
                return
            if isinstance(body, dict) and isinstance(body.get("members"), list):
                return  # a definite answer: not a member


def _member_in_answer(body: object, node_id: int) -> MemberAddress | None:
    """`node_id`'s addresses in a `GET /v1/members` answer (untrusted), if it is listed."""
    if not isinstance(body, dict) or not isinstance(body.get("members"), list):
        return None
    for item in body["members"]:
        if isinstance(item, dict) and item.get("id") == node_id:
            try:
                return parse_member(node_id, item.get("raft_address"), item.get("http_address"))
            except MembershipError:
                return None
    return None
