"""`kvraft serve`: run one node in this process until SIGTERM/SIGINT or a disk failure."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

__all__ = ["serve"]

log = logging.getLogger("kvraft.serve")

EXIT_STORAGE_CORRUPT = 2
EXIT_STORAGE_FAILED = 3
EXIT_CONFIG = 4


async def run_node(config_path: Path, node_id: int) -> int:
    from kvraft.config import ConfigError, load_config
    from kvraft.http_api import create_app
    from kvraft.server import RaftNode
    from kvraft.storage.api import StorageCorruptionError, StorageError

    try:
        config = load_config(config_path)
        spec = config.node(node_id)
    except ConfigError as error:
        log.error("invalid configuration %s: %s", config_path, error)
        return EXIT_CONFIG
    node = RaftNode(config, node_id)
    try:
        await node.start()
    except StorageCorruptionError as error:
        log.error("node %d refuses to start: %s", node_id, error)
        return EXIT_STORAGE_CORRUPT
    except StorageError as error:
        log.error("node %d cannot open its storage: %s", node_id, error)
        return EXIT_STORAGE_FAILED
    runner = web.AppRunner(create_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, spec.http_listen_host, spec.http_port, reuse_address=True)
    await site.start()
    log.info(
        "node %d serving: http %s, raft %s, data %s",
        node_id,
        spec.http_address,
        spec.raft_address,
        spec.data_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    assert node.failed is not None
    stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    failed: asyncio.Future[Any] = node.failed
    await asyncio.wait([stop_waiter, failed], return_when=asyncio.FIRST_COMPLETED)
    if node.failed.done():
        log.critical("node %d exits: its storage failed (%s)", node_id, node.failed.result())
        stop_waiter.cancel()
        await runner.cleanup()
        await node.stop(transfer_leadership=False)
        return EXIT_STORAGE_FAILED
    log.info("node %d stopping", node_id)
    # Stop taking new requests, hand leadership over (§3.10), flush, exit 0.
    await site.stop()
    await node.stop(transfer_leadership=True)
    await runner.cleanup()
    log.info("node %d stopped", node_id)
    return 0


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Cluster configuration (TOML).",
)
@click.option("--id", "node_id", type=click.IntRange(1), required=True, help="This node's id.")
@click.option("--log-level", default="INFO", show_default=True)
def serve(config_path: Path, node_id: int, log_level: str) -> None:
    """Run one kvraft node."""
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s node{node_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    sys.exit(runner(run_node(config_path, node_id)))
