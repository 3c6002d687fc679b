"""Measure how fast the linearizability checker decides realistic histories.

Run as ``python -m benchmarks.bench_linearizability``. It prints ops/s for
linearizable histories of 10,000 and 100,000 operations (10 keys, 5 concurrent
clients per key, 2% or 10% of ops with unknown outcome), for one key with
10,000 ops, and for histories with one injected violation: a stale read near
the end, and a read of a value never written.
"""

from __future__ import annotations

import dataclasses
import random
import time

from kvraft.linearizability import Operation, check_history

__all__ = ["generate_history", "main"]

OPERATION_DURATION_NS_MAX = 2_000_000
"""Longest simulated client round trip (2 ms) in the generated histories."""

THINK_TIME_NS_MAX = 500_000
"""Longest simulated pause between one client's operations."""


def generate_history(
    rng: random.Random,
    operation_count: int,
    key_count: int = 10,
    processes_per_key: int = 5,
    info_probability: float = 0.02,
    fail_probability: float = 0.01,
) -> list[Operation]:
    """A linearizable history: each op takes effect at a random point of its interval.

    Clients of a key run one op at a time; the register is then executed in the
    order of the chosen points to fill in what each op observed. An ``info`` op
    takes effect at its point or (half the time) never; a ``fail`` op never does.
    """
    planned: list[tuple[int, int, str, str, int, int, int | None, object]] = []
    next_value = 0
    for key_number in range(key_count):
        key = f"key-{key_number}"
        client_clocks = [rng.randrange(THINK_TIME_NS_MAX) for _ in range(processes_per_key)]
        per_key = operation_count // key_count + (key_number < operation_count % key_count)
        recent: list[int | None] = [None]
        for _ in range(per_key):
            client = min(range(processes_per_key), key=client_clocks.__getitem__)
            call = client_clocks[client]
            ret = call + rng.randrange(1, OPERATION_DURATION_NS_MAX)
            point = rng.randrange(call, ret + 1)
            kind = rng.choices(("read", "write", "cas", "delete"), (50, 30, 15, 5))[0]
            next_value += 1
            expected = rng.choice(recent[-4:]) if kind == "cas" else None
            if kind in ("write", "cas"):
                recent.append(next_value)
            process = key_number * processes_per_key + client
            planned.append((point, call, kind, key, process, ret, expected, next_value))
            client_clocks[client] = ret + rng.randrange(THINK_TIME_NS_MAX)

    registers: dict[str, object] = {}
    history: list[Operation] = []
    for point, call, kind, key, process, ret, expected, value in sorted(planned):
        del point  # only its order matters, which `sorted` already used
        roll = rng.random()
        status = "info" if roll < info_probability else "ok"
        if roll > 1 - fail_probability:
            status = "fail"
        takes_effect = status == "ok" or (status == "info" and rng.random() < 0.5)
        current = registers.get(key)
        output: object = None
        if kind == "read":
            output = current
        elif kind == "cas":
            output = current == expected
            if takes_effect and output:
                registers[key] = value
        elif takes_effect:
            registers[key] = value if kind == "write" else None
            if kind == "delete":
                del registers[key]
        history.append(
            Operation(
                process=process,
                kind=kind,
                key=key,
                value=value if kind in ("write", "cas") else None,
                expected=expected,
                output=output if status == "ok" else None,
                call=call,
                ret=None if status == "info" else ret,
                status=status,
            )
        )
    history.sort(key=lambda op: op.call)
    return history


def _last_read_position(history: list[Operation]) -> int:
    for position in range(len(history) - 1, -1, -1):
        if history[position].kind == "read" and history[position].status == "ok":
            return position
    raise ValueError("history has no ok read")


def _inject_never_written_read(history: list[Operation]) -> list[Operation]:
    """The same history with the last ok read answering a value never written."""
    position = _last_read_position(history)
    broken = list(history)
    broken[position] = dataclasses.replace(history[position], output="never-written")
    return broken


def _inject_stale_read(history: list[Operation]) -> list[Operation]:
    """The same history with the last ok read answering its key's first written value."""
    position = _last_read_position(history)
    read = history[position]
    first_write = next(op for op in history if op.key == read.key and op.kind == "write")
    broken = list(history)
    broken[position] = dataclasses.replace(read, output=first_write.value)
    return broken


def _measure(label: str, history: list[Operation]) -> None:
    started = time.perf_counter()
    result = check_history(history)
    elapsed_s = time.perf_counter() - started
    print(
        f"{label:<36} {len(history):>7} ops  verdict={result.verdict:<7} "
        f"{elapsed_s:8.3f} s  {len(history) / elapsed_s:>10,.0f} ops/s  "
        f"witness={len(result.witness)} ops"
    )


def main() -> None:
    """Print the checker's throughput on generated histories."""
    rng = random.Random(20240601)
    small = generate_history(rng, 10_000)
    large = generate_history(rng, 100_000)
    _measure("linearizable, 10 keys", small)
    _measure("linearizable, 10 keys", large)
    _measure(
        "linearizable, 10 keys, 10% info", generate_history(rng, 100_000, info_probability=0.1)
    )
    _measure("linearizable, 1 key", generate_history(rng, 10_000, key_count=1))
    _measure("one stale read, 10 keys", _inject_stale_read(large))
    _measure("one never-written read, 10 keys", _inject_never_written_read(small))


if __name__ == "__main__":
    main()
