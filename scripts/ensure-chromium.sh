#!/usr/bin/env bash
# Installs a headless browser for the dashboard's browser test (tests/test_dashboard_browser.py):
#   - Debian's chromium and chromium-driver, when `chromium` or `chromedriver` is missing (root only:
#     apt-get needs it; anyone else gets a note and exit 0, and the browser test skips saying why);
#   - selenium (the WebDriver client) into the project's virtualenv, when it cannot be imported.
# Idempotent and quiet on success: each step first checks whether its tool is already there.
# Usage: scripts/ensure-chromium.sh   (VENV=path overrides the virtualenv, default .venv)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"

# Runs a command silently; on failure shows its output and stops.
quietly() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "ensure-chromium: failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "ensure-chromium: chromium or chromedriver is missing and this is not root; the" \
            "browser test will be skipped (as root: apt-get install chromium chromium-driver)" >&2
    else
        quietly env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # --no-install-recommends: the recommended fonts and desktop integration are not needed
        # to render the dashboard headless.
        quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends chromium chromium-driver
    fi
fi

if [ -x "$PYTHON" ] && ! "$PYTHON" -c "import selenium" >/dev/null 2>&1; then
    quietly "$PYTHON" -m pip install --quiet --disable-pip-version-check "selenium>=4.10"
fi
