"""kvraft: a Raft-replicated key-value store."""

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("kvraft")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
