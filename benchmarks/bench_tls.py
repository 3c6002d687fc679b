"""What TLS costs kvraft (issue #20): the same cluster with and without it, in one run.

Run as ``python -m benchmarks.bench_tls [--quick] [--connections 1,64] [--row-seconds 10]
[--warmup-seconds 3] [--rounds 5] [--json PATH]``.

Two 3-node kvraft clusters on 127.0.0.1 with default settings (fsync on), both with a peer
secret (on by default since #20, and its HMAC is paid once per connection): one plain (HTTP
for clients, plain TCP between peers), one with ``[tls]`` (HTTPS, no client certificates
required) and ``[peer_tls]`` (mutual TLS 1.3 between peers, each certificate naming its node
id), with certificates from `kvraft.certs` (ECDSA P-256). wrk (``benchmarks/lua/kvraft.lua``)
drives each cluster's leader with puts of 100-byte values on 1,000 keys, at 1 and 64
connections. As in `benchmarks.bench_vs_etcd`, whose machinery this reuses, a row is a
warm-up and then short turns that alternate between the two clusters (who goes first
alternating too), so that drift on the machine hits both alike; each cluster's turns are
merged into its row, and only one cluster is under load at a time.

wrk speaks HTTPS (with keep-alive connections: the TLS handshake is paid once per
connection, as by any client that keeps its connections) but cannot be given a CA, so it does
not verify the certificate; the nodes do everything they would for a verifying client. The
"cost" column is how much lower the TLS cluster's throughput is; CPU is the nodes' own
(user + system), per acknowledged put.

Prints the table (Markdown); ``--json`` writes the rows. Prints, asserts nothing. Every
process and temporary directory is removed, even on failure and Ctrl-C. Installs ``wrk``
with apt-get when missing (as root only). A full run takes about two minutes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.bench_vs_etcd import (
    KEYS,
    ROUNDS_DEFAULT,
    ROUNDS_QUICK,
    ROW_SECONDS_DEFAULT,
    ROW_SECONDS_QUICK,
    SEGMENT_WARMUP_SECONDS,
    VALUE_BYTES,
    WARMUP_SECONDS_DEFAULT,
    WARMUP_SECONDS_QUICK,
    BenchmarkError,
    KvraftCluster,
    Node,
    Processes,
    Settings,
    _measure_segment,
    _row_of_segments,
    _running,
    _Segment,
    _version_line,
    ensure_installed,
    ratio,
)
from benchmarks.common import format_table, machine_info, write_json
from kvraft import launcher
from kvraft.certs import init_certificates
from kvraft.config import (
    PeerTlsSettings,
    TlsSettings,
    local_cluster_config,
    new_peer_secret,
    render_config,
    write_peer_secret,
)
from kvraft.tls import https_client_context

__all__ = ["CONNECTIONS_TLS_DEFAULT", "NODES", "main", "run"]

NODES = 3
"""The cluster size of the issue's row."""

CONNECTIONS_TLS_DEFAULT = (1, 64)
"""wrk connections per row: one (latency) and many (throughput)."""

PLAIN = "http"
TLS = "https+peer-tls"
"""The two clusters' names in the rows."""


def _cluster(processes: Processes, base: Path, *, tls: bool) -> KvraftCluster:
    """A 3-node cluster in `base` (not started): plain, or with HTTPS and peer mTLS."""
    base.mkdir(parents=True)
    secret_path = base / "peer-secret"
    write_peer_secret(secret_path, new_peer_secret())
    tls_settings: TlsSettings | None = None
    peer_tls: PeerTlsSettings | None = None
    certs = base / "certs"
    if tls:
        init_certificates(certs, list(range(1, NODES + 1)))
        cert, key, ca = certs / "node{id}.crt", certs / "node{id}.key", certs / "ca.crt"
        tls_settings = TlsSettings(cert, key, ca=ca)
        peer_tls = PeerTlsSettings(cert, key, ca)
    config = local_cluster_config(
        NODES,
        base,
        cluster_id=f"kvraft-bench-{base.name}",
        peer_secret_file=secret_path,
        tls=tls_settings,
        peer_tls=peer_tls,
    )
    ports = launcher.free_ports(2 * NODES)  # one call: two calls' ports may repeat
    http_ports, raft_ports = ports[:NODES], ports[NODES:]
    config = replace(
        config,
        nodes=tuple(
            replace(spec, http_port=http_ports[index], raft_port=raft_ports[index])
            for index, spec in enumerate(config.nodes)
        ),
    )
    config_path = base / "cluster.toml"
    config_path.write_text(render_config(config))
    nodes = [
        Node(
            spec.id,
            spec.http_port,
            launcher.serve_command(spec.id, config_path),
            base / f"node{spec.id}.log",
            scheme=config.http_scheme,
        )
        for spec in config.nodes
    ]
    cluster = KvraftCluster(processes, nodes, {spec.id: spec.data_dir for spec in config.nodes})
    cluster.system = TLS if tls else PLAIN
    if tls:
        cluster.client_context = https_client_context(certs / "ca.crt")
    return cluster


def _rows(
    processes: Processes, wrk: str, clusters: Sequence[KvraftCluster], settings: Settings
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    segment_seconds = max(1, round(settings.row_seconds / settings.rounds))
    for row_index, connections in enumerate(settings.connections):
        segments: dict[str, list[_Segment]] = {cluster.system: [] for cluster in clusters}
        row: dict[str, Any] = {
            "nodes": NODES,
            "operation": "put",
            "connections": connections,
            "load_average_1m_before": os.getloadavg()[0],
        }
        for round_index in range(settings.rounds):
            warmup_seconds = (
                settings.warmup_seconds
                if round_index == 0
                else min(settings.warmup_seconds, SEGMENT_WARMUP_SECONDS)
            )
            # Alternate who goes first, so that drift within a row hits both alike.
            order = clusters if (row_index + round_index) % 2 == 0 else list(reversed(clusters))
            for cluster in order:
                segments[cluster.system].append(
                    _measure_segment(
                        processes,
                        wrk,
                        cluster,
                        "put",
                        connections,
                        warmup_seconds,
                        segment_seconds,
                        settings,
                    )
                )
        for cluster in clusters:
            row[cluster.system] = _row_of_segments(
                cluster, "put", connections, segments[cluster.system]
            )
        plain, tls = row[PLAIN], row[TLS]
        row["ratio_ops"] = ratio(tls["ok_per_s"], plain["ok_per_s"])
        row["ratio_p50"] = ratio(tls["latency_us"]["p50"], plain["latency_us"]["p50"])
        row["ratio_p99"] = ratio(tls["latency_us"]["p99"], plain["latency_us"]["p99"])
        rows.append(row)
    return rows


def _errors(system_row: dict[str, Any]) -> int:
    """Non-2xx answers plus socket errors and timeouts (wrk's)."""
    return int(system_row["status_errors"]) + int(system_row["socket_errors"])


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of `rows` (what BENCHMARKS.md shows)."""

    def cost(row: dict[str, Any]) -> str:
        value = row["ratio_ops"]
        return "n/a" if value is None else f"{(1 - value) * 100:.0f} %"

    def cpu(system_row: dict[str, Any]) -> str:
        value = system_row.get("cpu_us_per_op")
        return "n/a" if value is None else f"{value:,.0f}"

    return format_table(
        [
            "puts, 3 nodes",
            "HTTP ops/s",
            "TLS ops/s",
            "TLS cost",
            "HTTP p50 ms",
            "TLS p50 ms",
            "HTTP p99 ms",
            "TLS p99 ms",
            "HTTP CPU us/put",
            "TLS CPU us/put",
            "errors",
        ],
        [
            [
                f"{row['connections']} connection{'s' if row['connections'] > 1 else ''}",
                f"{row[PLAIN]['ok_per_s']:,.0f}",
                f"{row[TLS]['ok_per_s']:,.0f}",
                cost(row),
                f"{row[PLAIN]['latency_us']['p50'] / 1000:.2f}",
                f"{row[TLS]['latency_us']['p50'] / 1000:.2f}",
                f"{row[PLAIN]['latency_us']['p99'] / 1000:.2f}",
                f"{row[TLS]['latency_us']['p99'] / 1000:.2f}",
                cpu(row[PLAIN]),
                cpu(row[TLS]),
                f"{_errors(row[PLAIN])} / {_errors(row[TLS])}",
            ]
            for row in rows
        ],
    )


def run(settings: Settings, directory: Path | None = None) -> dict[str, Any]:
    """Measure the rows `settings` asks for; print the table; return the results."""
    wrk = ensure_installed("wrk", "wrk")
    results: dict[str, Any] = {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "nodes": NODES,
            "connections": list(settings.connections),
            "row_seconds": settings.row_seconds,
            "warmup_seconds": settings.warmup_seconds,
            "rounds": settings.rounds,
            "keys": KEYS,
            "value_bytes": VALUE_BYTES,
            "quick": settings.quick,
        },
        "versions": {"wrk": _version_line([wrk, "-v"]).split(" Copyright")[0]},
        "machine": machine_info(),
        "rows": [],
    }
    print(
        f"kvraft with and without TLS: {NODES} nodes, puts at "
        f"{', '.join(map(str, settings.connections))} connections; {results['versions']['wrk']}",
        flush=True,
    )
    processes = Processes()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="kvraft-bench-tls-", dir=directory))
    try:
        clusters = [
            _cluster(processes, base / "plain", tls=False),
            _cluster(processes, base / "tls", tls=True),
        ]
        with _running(clusters):
            for cluster in clusters:
                cluster.leader()
            results["rows"] = _rows(processes, wrk, clusters, settings)
    finally:
        processes.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    if results["rows"]:
        print(
            "\n### TLS: puts on 3 nodes, HTTPS + peer mutual TLS against plain HTTP\n\n"
            + table(results["rows"]),
            flush=True,
        )
    return results


def _integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _exit_on_sigterm(signal_number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short rows (a smoke test)")
    parser.add_argument("--connections", type=_integers, default=CONNECTIONS_TLS_DEFAULT)
    parser.add_argument("--row-seconds", type=int, default=None, help="measured seconds per row")
    parser.add_argument("--warmup-seconds", type=int, default=None, help="excluded seconds")
    parser.add_argument("--rounds", type=int, default=None, help="turns per row per cluster")
    parser.add_argument("--directory", type=Path, default=None, help="where to put the data")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    quick = arguments.quick

    def chosen(value: int | None, full: int, quick_value: int) -> int:
        return value if value is not None else (quick_value if quick else full)

    settings = Settings(
        connections=arguments.connections,
        row_seconds=chosen(arguments.row_seconds, ROW_SECONDS_DEFAULT, ROW_SECONDS_QUICK),
        warmup_seconds=chosen(
            arguments.warmup_seconds, WARMUP_SECONDS_DEFAULT, WARMUP_SECONDS_QUICK
        ),
        rounds=max(1, chosen(arguments.rounds, ROUNDS_DEFAULT, ROUNDS_QUICK)),
        quick=quick,
    )
    if settings.row_seconds < 1:
        parser.error("--row-seconds must be at least 1 (wrk takes whole seconds)")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        results = run(settings, arguments.directory)
    except BenchmarkError as error:
        print(f"TLS benchmark failed: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
