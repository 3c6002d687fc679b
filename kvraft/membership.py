"""Cluster membership for the shell: the address book that travels in the Raft log, and the
pure decisions of a membership change.

The Raft core knows members only by id. Where to reach them is the shell's business, so every
CONFIG entry the daemon proposes carries, in `Configuration.context`, the *address book*: for
every member, its Raft and HTTP addresses, msgpack-encoded as ``{id: [raft_address,
http_address]}``. A node therefore learns the addresses of new members from its own log (or a
snapshot's metadata) exactly when it learns of the members themselves, and a restarted node
finds them on its own disk. The bootstrap configuration (index 0) has an empty context: its
addresses come from the cluster's config file.

A change is one step at a time (§4.1, §4.2.1): a new node is first added as a learner, which
replicates but neither votes nor counts for commit; once it has caught up it is promoted to
voter, a single-voter change. Removing a node is one step too. The functions here decide what
configuration to propose, whether a learner has caught up and who should lead next; they do no
IO, and everything they read from a request or the log is validated (`MembershipError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

import msgpack

from kvraft.config import ADDRESS_CHARS_MAX, ConfigError, NodeSpec, parse_address
from kvraft.raft import codec
from kvraft.raft.messages import Configuration

__all__ = [
    "ADDRESS_BOOK_BYTES_MAX",
    "ADDRESS_BOOK_MEMBERS_MAX",
    "CATCH_UP_LAG_ENTRIES_MAX",
    "LOOKUP_INTERVAL_S",
    "MEMBER_REQUEST_BYTES_MAX",
    "PEER_IDS_TRACKED_MAX",
    "AddRequest",
    "LookupThrottle",
    "MemberAddress",
    "MembershipConflictError",
    "MembershipError",
    "UnknownMemberError",
    "address_book_of",
    "decode_address_book",
    "encode_address_book",
    "is_caught_up",
    "parse_add_request",
    "parse_member",
    "parse_node_id",
    "parse_transfer_request",
    "pick_transfer_target",
    "plan_learner_add",
    "plan_promotion",
    "plan_removal",
]

ADDRESS_BOOK_BYTES_MAX = codec.CONTEXT_BYTES_MAX
"""The largest encoded address book: what a configuration's context may hold."""

ADDRESS_BOOK_MEMBERS_MAX = codec.MEMBERS_MAX
"""The most members an address book names: as many as a configuration may have."""

# A full book (every member with two addresses of the longest length, plus msgpack headers
# of at most 5 bytes per id and 3 per string and array) must always fit in a context.
assert ADDRESS_BOOK_MEMBERS_MAX * (2 * (ADDRESS_CHARS_MAX + 3) + 1 + 5) <= ADDRESS_BOOK_BYTES_MAX

CATCH_UP_LAG_ENTRIES_MAX = 1000
"""A learner whose match index is within this many entries of the leader's commit index has
caught up and may be promoted (§4.2.1). Promoting a node that is far behind would make it a
voter the quorum must wait for; a thousand entries are replicated in milliseconds, and a
tighter bound could never be met while clients keep writing."""

MEMBER_REQUEST_BYTES_MAX = 4096
"""The largest JSON body of a membership request: an id, two addresses and a flag need a few
hundred bytes; anything larger is refused before it is parsed."""

LOOKUP_INTERVAL_S = 5.0
"""A peer that connects but is unknown to a node's log is looked up at most this often: often
enough that a lagging node soon follows a leader it has not heard of, rarely enough that a
stranger dialling in again and again costs nothing."""

PEER_IDS_TRACKED_MAX = 1024
"""The most node ids a `LookupThrottle` remembers; beyond it the ones seen longest ago are
forgotten (the worst outcome is one look-up more)."""

_ADD_REQUEST_KEYS = frozenset({"id", "raft_address", "http_address", "voter"})
_TRANSFER_REQUEST_KEYS = frozenset({"to"})


class MembershipError(ValueError):
    """A malformed address book or membership request: the sender's fault (HTTP 400)."""


class UnknownMemberError(MembershipError):
    """The request names a node that is not a member (HTTP 404)."""


class MembershipConflictError(MembershipError):
    """The request contradicts the current membership (HTTP 409): an id that is already a
    member at other addresses, an address another member uses, removing the last voter."""


@dataclass(frozen=True, slots=True)
class MemberAddress:
    """Where to reach one member.

    Fields:
        id: the node id (1..NODE_ID_MAX).
        raft_host, raft_port: where peers dial it.
        http_host, http_port: where clients (and forwarding nodes) dial it.
    """

    id: int
    raft_host: str
    raft_port: int
    http_host: str
    http_port: int

    @property
    def raft_address(self) -> str:
        """``host:port`` that peers dial (IPv6 hosts in brackets)."""
        return _join(self.raft_host, self.raft_port)

    @property
    def http_address(self) -> str:
        """``host:port`` that clients dial (IPv6 hosts in brackets)."""
        return _join(self.http_host, self.http_port)

    @property
    def http_url(self) -> str:
        """The base URL of the member's HTTP API, e.g. ``http://127.0.0.1:8001``."""
        return f"http://{self.http_address}"

    def base_url(self, scheme: str) -> str:
        """The member's base URL with `scheme` (``https`` in a cluster with ``[tls]``)."""
        return f"{scheme}://{self.http_address}"

    @classmethod
    def of_spec(cls, spec: NodeSpec) -> MemberAddress:
        """The addresses of a config file's node entry."""
        return cls(spec.id, spec.raft_host, spec.raft_port, spec.http_host, spec.http_port)


@dataclass(frozen=True, slots=True)
class AddRequest:
    """A validated `POST /v1/members` body: the new `member` and whether it should end as a
    `voter` (True) or stay a learner."""

    member: MemberAddress
    voter: bool = True


# --- parsing untrusted input ------------------------------------------------------------


def parse_node_id(value: object, what: str = "id") -> int:
    """A node id from untrusted input: an integer (not a bool) in 1..NODE_ID_MAX."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MembershipError(f"{what}: expected an integer node id, got {type(value).__name__}")
    if not 1 <= value <= codec.NODE_ID_MAX:
        raise MembershipError(f"{what}: must be in 1..{codec.NODE_ID_MAX}, got {value}")
    return value


def parse_member(node_id: object, raft_address: object, http_address: object) -> MemberAddress:
    """Validate one member's id and ``host:port`` addresses (the config file's rules)."""
    checked_id = parse_node_id(node_id)
    hosts_ports = []
    for key, value in (("raft_address", raft_address), ("http_address", http_address)):
        try:
            hosts_ports.append(parse_address(value, key))
        except ConfigError as error:
            raise MembershipError(str(error)) from None
    (raft_host, raft_port), (http_host, http_port) = hosts_ports
    if (raft_host, raft_port) == (http_host, http_port):
        raise MembershipError("raft_address and http_address must differ")
    return MemberAddress(checked_id, raft_host, raft_port, http_host, http_port)


def parse_add_request(body: object) -> AddRequest:
    """Validate a decoded `POST /v1/members` JSON body."""
    if not isinstance(body, dict):
        raise MembershipError('expected a JSON object {"id", "raft_address", "http_address"}')
    unknown = sorted(str(key) for key in body if key not in _ADD_REQUEST_KEYS)
    if unknown:
        raise MembershipError(f"unknown field {unknown[0]!r}")
    missing = [key for key in ("id", "raft_address", "http_address") if key not in body]
    if missing:
        raise MembershipError(f"missing field {missing[0]!r}")
    voter = body.get("voter", True)
    if not isinstance(voter, bool):
        raise MembershipError("voter: expected true or false")
    member = parse_member(body["id"], body["raft_address"], body["http_address"])
    return AddRequest(member, voter)


def parse_transfer_request(body: object) -> int | None:
    """Validate a decoded `POST /v1/leader/transfer` JSON body (None or ``{}``: any voter)."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise MembershipError('expected a JSON object {"to": id} or nothing')
    unknown = sorted(str(key) for key in body if key not in _TRANSFER_REQUEST_KEYS)
    if unknown:
        raise MembershipError(f"unknown field {unknown[0]!r}")
    target = body.get("to")
    return None if target is None else parse_node_id(target, "to")


# --- the address book -------------------------------------------------------------------


def encode_address_book(book: Mapping[int, MemberAddress]) -> bytes:
    """The context bytes for a configuration whose members are `book`'s keys."""
    if len(book) > ADDRESS_BOOK_MEMBERS_MAX:
        raise MembershipError(f"more than {ADDRESS_BOOK_MEMBERS_MAX} members")
    obj = {
        node_id: [book[node_id].raft_address, book[node_id].http_address]
        for node_id in sorted(book)
    }
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def decode_address_book(data: bytes) -> dict[int, MemberAddress]:
    """Decode what `encode_address_book` made; `MembershipError` on anything else."""
    if len(data) > ADDRESS_BOOK_BYTES_MAX:
        raise MembershipError(
            f"address book: {len(data)} bytes is more than the limit of {ADDRESS_BOOK_BYTES_MAX}"
        )
    try:
        obj: Any = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,  # the keys are node ids (integers), checked below
            max_map_len=min(ADDRESS_BOOK_MEMBERS_MAX, len(data)),
            max_array_len=2,
            max_str_len=ADDRESS_CHARS_MAX,
            max_bin_len=0,
            max_ext_len=0,
        )
    except Exception as error:  # msgpack raises many types on garbage, trailing data included
        raise MembershipError(
            f"address book: not valid msgpack ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(obj, dict):
        raise MembershipError("address book: expected a map of node id to addresses")
    book: dict[int, MemberAddress] = {}
    for key, value in obj.items():
        node_id = parse_node_id(key, "address book id")
        if not isinstance(value, list) or len(value) != 2:
            raise MembershipError(f"address book: node {node_id}: expected [raft, http] addresses")
        try:
            book[node_id] = parse_member(node_id, value[0], value[1])
        except MembershipError as error:
            raise MembershipError(f"address book: node {node_id}: {error}") from None
    return book


def address_book_of(
    configuration: Configuration, fallback: Mapping[int, MemberAddress]
) -> dict[int, MemberAddress]:
    """The addresses of `configuration`'s members: from its context, or (for a configuration
    without one, the bootstrap configuration) from `fallback`, the config file's nodes.

    A context that does not name exactly the configuration's members is refused: it would
    leave a member unreachable or make a non-member known.
    """
    if not configuration.context:
        return {
            node_id: fallback[node_id] for node_id in configuration.members if node_id in fallback
        }
    book = decode_address_book(configuration.context)
    if set(book) != configuration.members:
        raise MembershipError(
            f"address book names {sorted(book)} but the members are {sorted(configuration.members)}"
        )
    return book


# --- planning a change ------------------------------------------------------------------


def _complete_book(
    configuration: Configuration, book: Mapping[int, MemberAddress]
) -> dict[int, MemberAddress]:
    missing = configuration.members - set(book)
    if missing:
        raise MembershipConflictError(f"no address known for member {min(missing)}")
    return {node_id: book[node_id] for node_id in configuration.members}


def plan_learner_add(
    configuration: Configuration, book: Mapping[int, MemberAddress], member: MemberAddress
) -> Configuration | None:
    """The configuration that adds `member` as a learner, or None if it is already a member
    at the same addresses (so a repeated request is harmless)."""
    if member.id in configuration.members:
        known = book.get(member.id)
        if known != member:
            where = f"{known.raft_address} / {known.http_address}" if known else "unknown"
            raise MembershipConflictError(
                f"node {member.id} is already a member at another address ({where}); "
                "remove it first"
            )
        return None
    current = _complete_book(configuration, book)
    for other in current.values():
        used = {other.raft_address, other.http_address}
        for address in (member.raft_address, member.http_address):
            if address in used:
                raise MembershipConflictError(f"address {address} is used by node {other.id}")
    if len(current) + 1 > ADDRESS_BOOK_MEMBERS_MAX:
        raise MembershipConflictError(f"the cluster already has {len(current)} members")
    current[member.id] = member
    return Configuration(
        voters=configuration.voters,
        learners=configuration.learners | {member.id},
        context=encode_address_book(current),
    )


def plan_promotion(
    configuration: Configuration, book: Mapping[int, MemberAddress], node_id: int
) -> Configuration | None:
    """The configuration that makes learner `node_id` a voter; None if it already is one."""
    if node_id in configuration.voters:
        return None
    if node_id not in configuration.learners:
        raise UnknownMemberError(f"node {node_id} is not a member")
    return Configuration(
        voters=configuration.voters | {node_id},
        learners=configuration.learners - {node_id},
        context=encode_address_book(_complete_book(configuration, book)),
    )


def plan_removal(
    configuration: Configuration, book: Mapping[int, MemberAddress], node_id: int
) -> Configuration:
    """The configuration without `node_id` (a voter or a learner)."""
    if node_id not in configuration.members:
        raise UnknownMemberError(f"node {node_id} is not a member")
    if configuration.voters == {node_id}:
        raise MembershipConflictError(f"node {node_id} is the only voter; it cannot be removed")
    remaining = _complete_book(configuration, book)
    del remaining[node_id]
    return dataclasses.replace(
        configuration,
        voters=configuration.voters - {node_id},
        learners=configuration.learners - {node_id},
        context=encode_address_book(remaining),
    )


def is_caught_up(match_index: int, commit_index: int, *, replicating: bool) -> bool:
    """Whether a member is close enough to the leader to be promoted: the leader has found
    where their logs match and streams entries to it (`replicating`: not probing, not sending
    a snapshot), and its `match_index` is within CATCH_UP_LAG_ENTRIES_MAX of `commit_index`.
    A node that has acknowledged nothing is never caught up, however short the log."""
    return (
        replicating and match_index > 0 and commit_index - match_index <= CATCH_UP_LAG_ENTRIES_MAX
    )


def pick_transfer_target(
    voters: Set[int], leader_id: int, match_index_by_id: Mapping[int, int]
) -> int | None:
    """The voter other than `leader_id` with the highest match index (ties: the lowest id),
    so the hand-over needs the least catching up (§3.10); None if there is no other voter."""
    candidates = sorted(voters - {leader_id})
    if not candidates:
        return None
    return max(candidates, key=lambda node_id: (match_index_by_id.get(node_id, -1), -node_id))


class LookupThrottle:
    """Which unknown peers to look up, and when (the clock is the caller's).

    A node looks up a peer that dials in but is not in its log, in case its log is behind
    (`kvraft.address_book`). It never looks up a node it saw removed from its own configuration,
    and any other id at most once per `interval_s`; both memories are bounded by `ids_max`.
    """

    def __init__(
        self, interval_s: float = LOOKUP_INTERVAL_S, ids_max: int = PEER_IDS_TRACKED_MAX
    ) -> None:
        self.interval_s = interval_s
        self.ids_max = ids_max
        self._due_s: dict[int, float] = {}  # insertion-ordered: oldest first
        self._removed: dict[int, None] = {}

    def removed(self, node_id: int) -> None:
        """`node_id` left this node's configuration: never look it up."""
        _remember(self._removed, node_id, None, self.ids_max)

    def rejoined(self, node_id: int) -> None:
        """`node_id` is in this node's configuration again."""
        self._removed.pop(node_id, None)

    def is_removed(self, node_id: int) -> bool:
        return node_id in self._removed

    def allow(self, node_id: int, now_s: float) -> bool:
        """Whether to look `node_id` up at `now_s`; if so, the next time is an interval on."""
        if node_id in self._removed or now_s < self._due_s.get(node_id, now_s):
            return False
        _remember(self._due_s, node_id, now_s + self.interval_s, self.ids_max)
        return True


def _remember(ordered: dict[int, Any], key: int, value: Any, size_max: int) -> None:
    ordered.pop(key, None)
    ordered[key] = value
    while len(ordered) > size_max:
        del ordered[next(iter(ordered))]


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
