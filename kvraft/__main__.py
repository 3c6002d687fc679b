"""`python -m kvraft` works like `kvraft`."""

from kvraft.cli import main

main()
