"""`kvraft user|role|auth` and `--user` on the client commands (#20), against an in-process
3-node cluster (click's runner, in a thread: the cluster runs in the test's event loop)."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

from kvraft.cli import main
from tests.in_process_cluster import InProcessNode

__all__: list[str] = []


async def test_set_up_enable_and_use_auth_from_the_command_line(
    members: list[InProcessNode],
) -> None:
    endpoints = ",".join(m.url for m in members)

    def run(*args: str, password: str | None = None, stdin: str | None = None) -> Result:
        env = {"KVRAFT_ENDPOINTS": endpoints, "KVRAFT_PASSWORD": password}
        return CliRunner().invoke(main, list(args), env=env, input=stdin)

    def scenario() -> None:
        for args, stdin in (
            (("role", "add", "admin", "--admin"), None),
            (("role", "add", "app"), None),
            (("role", "grant", "app", "app/", "readwrite"), None),
            (("user", "add", "root", "--role", "admin", "--password-stdin"), "root-pw\n"),
            (("user", "add", "alice", "--password-stdin"), "alice-pw\n"),
            (("user", "grant-role", "alice", "app"), None),
            (("auth", "enable"), None),
        ):
            result = run(*args, stdin=stdin)
            assert result.exit_code == 0, (args, result.output)
        assert "enabled" in run("auth", "status").output
        refused = run("put", "app/x", "1")
        assert refused.exit_code == 1 and "unauthenticated" in refused.output
        wrote = run("put", "app/x", "1", "--user", "alice", password="alice-pw")
        assert wrote.exit_code == 0, wrote.output
        read = run("get", "app/x", "--user", "alice", password="alice-pw")
        assert (read.exit_code, read.output) == (0, "1")
        denied = run("put", "other", "1", "--user", "alice", password="alice-pw")
        assert denied.exit_code == 1 and "permission_denied" in denied.output
        users = run("user", "list", "--user", "root", password="root-pw")
        assert users.exit_code == 0 and "alice  app" in users.output, users.output
        roles = run("role", "list", "--user", "root", password="root-pw")
        assert "app  readwrite 'app/'" in roles.output, roles.output
        assert run("user", "list", "--user", "alice", password="alice-pw").exit_code == 1
        wrong = run("get", "app/x", "--user", "alice", password="nope")
        assert wrong.exit_code == 1 and "wrong user name or password" in wrong.output
        assert run("events").exit_code == 1  # every node refuses without a token
        events = run("events", "--json", "--user", "root", password="root-pw")
        assert events.exit_code == 0 and '"leader_elected"' in events.output, events.output
        assert run("auth", "disable", "--user", "root", password="root-pw").exit_code == 0

    await asyncio.to_thread(scenario)
