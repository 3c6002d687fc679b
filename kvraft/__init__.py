"""kvraft: a Raft-replicated key-value store."""
