"""`kvraft txn`: run a transaction from a JSON file, stdin, or one-line compares and
operations (`kvraft.txn` describes both forms)."""

from __future__ import annotations

import base64
import json
import sys
from typing import IO, Any

import click

from kvraft.client import Fence
from kvraft.commands.kv import (
    VALUE_INPUT_BYTES_MAX,
    _client_options,
    fence_option,
    make_client,
    reported_errors,
)
from kvraft.txn import (
    Txn,
    TxnAnswer,
    TxnSyntaxError,
    parse_compare,
    parse_operation,
    txn_from_json,
)

__all__ = ["answer_json", "build_txn_from_options", "txn"]


def build_txn_from_options(
    body_file: IO[bytes] | None,
    compares: tuple[str, ...],
    then: tuple[str, ...],
    otherwise: tuple[str, ...],
) -> Txn:
    """The transaction the command line describes; `click.UsageError` if it is malformed."""
    one_line = bool(compares or then or otherwise)
    if body_file is not None and one_line:
        raise click.UsageError("give a JSON body (FILE or -) or --if/--then/--else, not both")
    try:
        if body_file is None and not one_line:
            raise click.UsageError("give a JSON body (FILE, or - for stdin) or --if/--then/--else")
        if body_file is not None:
            data = body_file.read(VALUE_INPUT_BYTES_MAX + 1)
            if len(data) > VALUE_INPUT_BYTES_MAX:
                raise click.UsageError(f"the body is over {VALUE_INPUT_BYTES_MAX} bytes")
            try:
                body = json.loads(data)
            except ValueError as error:
                raise click.UsageError(f"the body is not JSON: {error}") from None
            return txn_from_json(body)
        return (
            Txn()
            .compare(*(parse_compare(c) for c in compares))
            .then(*(parse_operation(o) for o in then))
            .else_(*(parse_operation(o) for o in otherwise))
        )
    except TxnSyntaxError as error:
        raise click.UsageError(str(error)) from None


def answer_json(answer: TxnAnswer) -> dict[str, Any]:
    """The answer as the server's JSON (`POST /v1/txn`), values as base64 and as text."""
    results: list[dict[str, Any]] = []
    for result in answer.results:
        one: dict[str, Any] = {"op": result.op}
        if result.revision is not None:
            one["revision"] = result.revision
        if result.deleted is not None:
            one["deleted"] = result.deleted
        if result.op == "get":
            one["key"] = result.key
            if result.value is not None:
                one["value_b64"] = base64.b64encode(result.value).decode("ascii")
                one["value"] = result.value.decode("utf-8", "backslashreplace")
        if result.op == "list":
            one["items"] = [
                {"key": k, "revision": r, "value": v.decode("utf-8", "backslashreplace")}
                for k, v, r in result.items
            ]
            one["continuation"] = result.continuation
        results.append(one)
    return {"succeeded": answer.succeeded, "revision": answer.revision, "results": results}


@click.command()
@click.argument("body_file", type=click.File("rb"), required=False)
@click.option("--if", "compares", multiple=True, help="A compare, e.g. 'rev(a)==5' (repeatable).")
@click.option(
    "--then", "then", multiple=True, help="An operation if every compare holds, e.g. 'put a 1'."
)
@click.option(
    "--else", "otherwise", multiple=True, help="An operation if a compare fails, e.g. 'get a'."
)
@click.option(
    "--idempotency-key", default=None, help="Makes retries of this transaction exactly-once."
)
@fence_option
@_client_options
def txn(
    body_file: IO[bytes] | None,
    compares: tuple[str, ...],
    then: tuple[str, ...],
    otherwise: tuple[str, ...],
    idempotency_key: str | None,
    fence: Fence | None,
    endpoints_text: str,
    timeout_s: float,
) -> None:
    """Run a transaction: the JSON body of POST /v1/txn from BODY_FILE ('-' for stdin), or
    --if/--then/--else forms. Prints the answer as JSON; exits 0 whichever branch ran."""
    built = build_txn_from_options(body_file, compares, then, otherwise)
    client = make_client(endpoints_text, timeout_s)
    with reported_errors():
        answer = client.txn(built, idempotency_key=idempotency_key, fence=fence)
    json.dump(answer_json(answer), sys.stdout)
    sys.stdout.write("\n")
