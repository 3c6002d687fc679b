"""The client's transaction builder, `delete_prefix` and `count`, and `kvraft txn` / `kvraft
delete --prefix`, against three real nodes in one event loop (`tests/in_process_cluster.py`).
The blocking client and the CLI run on a worker thread so the cluster's loop keeps serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvraft import txn
from kvraft.cli import main
from kvraft.client import AsyncKVClient, ClientError, KVClient
from kvraft.txn import TxnSyntaxError, parse_compare, parse_operation
from tests.in_process_cluster import InProcessNode


async def test_a_transfer_built_with_the_builder_and_its_stale_retry(
    members: list[InProcessNode],
) -> None:
    async with AsyncKVClient([m.url for m in members]) as client:
        a = await client.put("acct/a", b"100")
        b = await client.put("acct/b", b"0")
        transfer = (
            txn.Txn()
            .compare(txn.revision("acct/a") == a, txn.revision("acct/b") == b)
            .then(txn.put("acct/a", b"60"), txn.put("acct/b", b"40"))
            .else_(txn.get("acct/a"), txn.list_prefix("acct/"))
        )
        first = await client.txn(transfer)
        assert first.succeeded
        assert [r.revision for r in first.results] == [first.revision, first.revision]
        # The same transaction again: the revisions moved on, so the failure branch reads.
        second = await client.txn(transfer)
        assert not second.succeeded
        assert second.results[0].value == b"60"
        assert second.results[1].items == [
            ("acct/a", b"60", first.revision),
            ("acct/b", b"40", first.revision),
        ]
        assert await client.count("acct/") == 2
        assert await client.delete_prefix("acct/") == (second.revision + 1, 2)
        assert await client.count("") == 0


async def test_the_blocking_client_takes_the_three_parts_like_python_etcd3(
    members: list[InProcessNode],
) -> None:
    endpoints = [m.url for m in members]

    def run() -> None:
        client = KVClient(endpoints)
        client.put("flag", b"on")
        answer = client.txn(
            compare=[txn.value("flag") == b"on", txn.absent("lock")],
            success=[txn.put("lock", b"me"), txn.delete("flag")],
            failure=[txn.get("lock")],
        )
        assert answer.succeeded and answer.results[1].deleted is True
        with pytest.raises(ClientError) as refused:
            client.txn(success=[txn.put("x", b"1"), txn.delete("x")])
        assert refused.value.code == "duplicate_key"

    await asyncio.to_thread(run)


async def test_the_cli_runs_one_line_and_json_transactions_and_range_deletes(
    members: list[InProcessNode], tmp_path: Path
) -> None:
    runner = CliRunner(env={"KVRAFT_ENDPOINTS": ",".join(m.url for m in members)})

    async def cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
        result = await asyncio.to_thread(runner.invoke, main, list(args), input=stdin)
        return result.exit_code, result.output

    code, output = await cli("put", "a", "5")
    assert code == 0, output
    revision = int(output.split()[-1])
    code, output = await cli(
        "txn", "--if", f"rev(a)=={revision}", "--then", "put a 1", "--then", "del b",
        "--else", "get a",
    )  # fmt: skip
    assert code == 0, output
    answer = json.loads(output)
    assert answer["succeeded"] is True
    assert answer["results"] == [
        {"op": "put", "revision": answer["revision"]},
        {"op": "delete", "deleted": False},
    ]
    body = {
        "compare": [{"key": "a", "target": "value", "op": "==", "value": "5"}],
        "success": [{"op": "put", "key": "a", "value": "6"}],
        "failure": [{"op": "get", "key": "a"}],
    }
    code, output = await cli("txn", "-", stdin=json.dumps(body))
    assert code == 0, output
    answer = json.loads(output)
    assert answer["succeeded"] is False
    assert answer["results"][0]["value"] == "1"
    path = tmp_path / "txn.json"
    path.write_text(json.dumps({**body, "compare": []}))
    code, output = await cli("txn", str(path))
    assert (code, json.loads(output)["succeeded"]) == (0, True)
    for key in ("p/1", "p/2"):
        await cli("put", key, "x")
    code, output = await cli("delete", "--prefix", "p/")
    assert code == 0 and output.startswith("deleted 2 keys under 'p/'"), output
    code, output = await cli("txn", "--if", "rev(a)=five", "--then", "get a")
    assert code == 2 and "rev(KEY)==N" in output


@pytest.mark.parametrize(
    "text",
    ["rev(a)==x", "exists(a)<true", "age(a)==1", "rev(a)", "value(a)~=b"],
)
def test_a_malformed_one_line_compare_is_refused(text: str) -> None:
    with pytest.raises(TxnSyntaxError):
        parse_compare(text)


@pytest.mark.parametrize("text", ["put a", "cas a 1", "list p x", "get", "del 'a"])
def test_a_malformed_one_line_operation_is_refused(text: str) -> None:
    with pytest.raises(TxnSyntaxError):
        parse_operation(text)


def test_one_line_forms_read_as_the_builder_writes_them() -> None:
    assert parse_compare("rev(a/b)>=5".replace(">=", ">")) == (txn.revision("a/b") > 5)
    assert parse_compare("exists(k)!=false") == (txn.exists("k") != False)  # noqa: E712
    assert parse_operation("put k 'two words'") == txn.put("k", b"two words")
    assert parse_operation("list p/ 10") == txn.list_prefix("p/", 10)
