"""`python -m kvraft.healthcheck [--ready]`: the container health check, following the node's
own HTTP address.

A check runs as a separate process (`docker exec`-like): it cannot see the command line or
the environment the entrypoint computed, and the address is not fixed (`kvraft dev --http-port`,
each compose service's own port, a config mounted at run time). So the node tells it: when
`KVRAFT_HTTP_URL_FILE` is set, `kvraft serve` writes the URL it can be reached at from inside
its own host (loopback when it listens on every interface) to that file once it listens for
clients, and removes it when it exits. The check reads that file and asks `/healthz` (the
process answers HTTP: liveness) or, with `--ready`, `/readyz` (it knows a leader and has caught
up: readiness).

Over HTTPS (the config's ``[tls]``) the node writes, after the URL, the files the check needs:
``cacert PATH`` (``tls.ca``, which must have signed the node's certificate; without it the
system's trust store is asked) and ``cert PATH`` / ``key PATH`` (the node's own certificate,
accepted where the node requires client certificates). The check runs as the node's user, in
its container, so it can read them.

One node per file: the variable is meant for one node per container; `cluster up` with more
than one node does not pass it on.

Exit status, as Docker reads it: 0 healthy, 1 unhealthy (with one line saying why).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "CHECK_TIMEOUT_S",
    "HTTP_URL_FILE_VARIABLE",
    "URL_FILE_BYTES_MAX",
    "check",
    "local_http_url",
    "main",
    "remove_url_file",
    "write_url_file",
]

HTTP_URL_FILE_VARIABLE = "KVRAFT_HTTP_URL_FILE"

CHECK_TIMEOUT_S = 3.0
"""Under the Dockerfile's `--timeout=5s`, so the check reports its own reason rather than
being killed by Docker."""

URL_FILE_BYTES_MAX = 16 * 1024
"""A URL and three TLS file paths (each at most PATH_MAX); anything longer is not ours."""

_LOOPBACK = "127.0.0.1"


def local_http_url(listen_host: str | None, port: int, scheme: str = "http") -> str:
    """The URL a process on the node's own host reaches it at: its listen address, or
    loopback when it listens on every interface (``listen_host`` None)."""
    host = listen_host if listen_host is not None else _LOOPBACK
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


_TLS_FIELDS = ("cacert", "cert", "key")


def write_url_file(
    path: Path,
    url: str,
    *,
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> None:
    """Write `url` (and the TLS files a check of it needs) to `path` atomically (temp file
    + rename): a check never reads half a URL."""
    lines = [url]
    for name, value in zip(_TLS_FIELDS, (cacert, cert, key), strict=True):
        if value is not None:
            lines.append(f"{name} {value}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def remove_url_file(path: Path, url: str) -> None:
    """Remove `path` if it still holds `url` (another node may have taken the file over)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.read_text(encoding="utf-8").splitlines()[:1] == [url]:
            path.unlink()


def _https_context(fields: dict[str, str]) -> ssl.SSLContext:
    """What the check trusts and shows for an https:// URL, from the URL file's lines."""
    context = ssl.create_default_context(cafile=fields.get("cacert"))
    if "cert" in fields and "key" in fields:
        context.load_cert_chain(fields["cert"], fields["key"])
    return context


def check(url_file: Path, *, ready: bool, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """(healthy, one line saying what was found)."""
    try:
        with open(url_file, "rb") as file:
            lines = file.read(URL_FILE_BYTES_MAX).decode("utf-8").splitlines()
    except FileNotFoundError:
        return False, f"{url_file} does not exist: the node is not listening (yet)"
    except (OSError, UnicodeDecodeError) as error:
        return False, f"cannot read {url_file}: {error}"
    url = lines[0].strip() if lines else ""
    if not url.startswith(("http://", "https://")):
        return False, f"{url_file} does not hold an http:// or https:// URL"
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(" ")
        if name in _TLS_FIELDS and value:
            fields[name] = value
    target = f"{url}/readyz" if ready else f"{url}/healthz"
    try:
        context = _https_context(fields) if url.startswith("https://") else None
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        return False, f"cannot use the TLS files in {url_file}: {error}"
    try:
        with urllib.request.urlopen(target, timeout=timeout_s, context=context) as answer:
            return True, f"{target}: {answer.status}"
    except urllib.error.HTTPError as error:
        # A 503 from /readyz carries the node's reason (no leader, not caught up).
        reason = error.read(URL_FILE_BYTES_MAX).decode("utf-8", "replace").strip()
        return False, f"{target}: {error.code} {reason}"
    except (OSError, ValueError) as error:
        return False, f"{target}: {getattr(error, 'reason', error)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvraft.healthcheck",
        description=(
            f"Check the node whose URL is in ${HTTP_URL_FILE_VARIABLE}: /healthz, "
            "or /readyz with --ready. Exit 0 healthy, 1 not."
        ),
    )
    parser.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    parser.add_argument("--timeout-s", type=float, default=CHECK_TIMEOUT_S)
    options = parser.parse_args(argv)
    url_file = os.environ.get(HTTP_URL_FILE_VARIABLE)
    if not url_file:
        print(f"{HTTP_URL_FILE_VARIABLE} is not set: no node to check", file=sys.stderr)
        return 1
    healthy, line = check(Path(url_file), ready=options.ready, timeout_s=options.timeout_s)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
