"""Subcommands of the `kvraft` command line, one module each."""
