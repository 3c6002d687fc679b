"""Every exit status a `kvraft` command can end with, one meaning each.

click owns 1 (the command failed: its one-line ``Error:`` says why) and 2 (the command line
is wrong: a bad flag or argument). kvraft's own codes start at 3, so that a script can tell
a typo from, say, a corrupt log: the README's advice for a corrupt log (delete the data
directory) must never be followed because of a mistyped flag. The README's table is checked
against `EXIT_CODES` by the tests.
"""

from __future__ import annotations

__all__ = [
    "EXIT_ADDRESS_UNAVAILABLE",
    "EXIT_CHAOS_HARNESS_ERROR",
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_JOIN_REFUSED",
    "EXIT_LOCK_LOST",
    "EXIT_OK",
    "EXIT_STORAGE_CORRUPT",
    "EXIT_STORAGE_FAILED",
    "EXIT_USAGE",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STORAGE_FAILED = 3
EXIT_CONFIG = 4
EXIT_JOIN_REFUSED = 5
EXIT_STORAGE_CORRUPT = 6
EXIT_ADDRESS_UNAVAILABLE = 7
EXIT_CHAOS_HARNESS_ERROR = 8
EXIT_LOCK_LOST = 9
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, tuple[str, str]] = {
    EXIT_OK: ("any", "success"),
    EXIT_FAILED: (
        "any (click)",
        "the command failed and says why in one line: the cluster refused or could not be "
        "reached, no such key, a check of `chaos` or `sim` failed",
    ),
    EXIT_USAGE: (
        "any (click)",
        "the command line is wrong: an unknown or invalid flag or argument",
    ),
    EXIT_STORAGE_FAILED: (
        "serve",
        "its data directory cannot be used (a disk error such as EIO or ENOSPC on open, write "
        "or fsync, or another process holds it): nothing it failed to persist was "
        "acknowledged; fix that and start it again",
    ),
    EXIT_CONFIG: (
        "serve",
        "the configuration is invalid or cannot be read (config file, identity file, "
        "flags that contradict them): fix it and start again",
    ),
    EXIT_JOIN_REFUSED: (
        "serve --join",
        "could not join: the join URL did not answer or is another cluster, the cluster "
        "refused to add the node, or did not add it within the join timeout",
    ),
    EXIT_STORAGE_CORRUPT: (
        "serve",
        "the WAL or a snapshot is corrupt (not a torn last write): the node refuses to start; "
        "to recover, delete this node's data directory (see Storage and recovery)",
    ),
    EXIT_ADDRESS_UNAVAILABLE: (
        "serve",
        "cannot listen on its Raft or HTTP address (in use, not this machine's, or needs "
        "privileges)",
    ),
    EXIT_CHAOS_HARNESS_ERROR: (
        "chaos",
        "the harness itself failed (could not start the cluster, ...): nothing was checked",
    ),
    EXIT_LOCK_LOST: (
        "lock, elect",
        "the lock's lease expired while it was held (no keepalive reached the cluster for a "
        "whole TTL): `lock` stopped its command; another holder may have the lock now",
    ),
    EXIT_INTERRUPTED: ("any", "interrupted (Ctrl-C, SIGINT)"),
}
"""code -> (the commands that use it, what it means)."""
