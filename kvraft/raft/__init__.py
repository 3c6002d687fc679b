"""The pure Raft core: no IO, no clock, no global randomness."""
