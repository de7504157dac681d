#!/usr/bin/env bash
# Browser tests of the web UI: drives Debian's Chromium with Playwright
# against freshly started ocellus servers (tests/ui/ui_flows.py, on top of
# tests/ui/harness.py), checking each page for Content-Security-Policy
# violations, script errors and accessibility problems (axe-core, WCAG 2.1
# A and AA rules). The exit status is that of ui_flows.py: non-zero if any
# step failed.
#
# Usage: tests/ui/run.sh PATH_TO_OCELLUS_BINARY
#
# Needs /usr/bin/chromium (apt-get install chromium), npm (apt-get install
# npm) for axe-core, and python3-venv. Playwright's own browser builds are
# never downloaded: the flows launch /usr/bin/chromium.
#
# Environment:
#   OCELLUS_UIENV  venv holding the pinned Playwright (default: target/uienv
#                  in the repository); created and filled on first use.
#   OCELLUS_UINODE npm prefix holding the pinned axe-core (default:
#                  target/ui-node in the repository).
#   PYTHON         interpreter used to create that venv (default: python3.11
#                  if present, else python3).
#   OCELLUS_UI_BIG 1 adds the long run: a sparse 4.5 GiB file uploaded through
#                  the browser reaches active with the right size and md5.
#   OCELLUS_LOG    passed on to the servers, for more verbose logs. Every
#                  other OCELLUS_* variable is ignored by the servers.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 PATH_TO_OCELLUS_BINARY" >&2
    exit 2
fi
if [[ ! -x $1 ]]; then
    echo "error: $1 is not an executable file" >&2
    exit 2
fi
bin=$(realpath "$1")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
requirements=$here/requirements.txt

# axe-core, the accessibility rules engine, from the npm registry; only its
# axe.min.js is used, evaluated in the page by harness.axe_violations.
axe_version=4.14.1

# Relative locations are taken from the repository root so the script
# behaves the same from any working directory.
uienv=${OCELLUS_UIENV:-target/uienv}
[[ $uienv == /* ]] || uienv=$root/$uienv
uinode=${OCELLUS_UINODE:-target/ui-node}
[[ $uinode == /* ]] || uinode=$root/$uinode

if [[ ! -x /usr/bin/chromium ]]; then
    echo "error: /usr/bin/chromium is required (apt-get install chromium)" >&2
    exit 2
fi
if ! command -v npm >/dev/null; then
    echo "error: npm is required to fetch axe-core (apt-get install npm)" >&2
    exit 2
fi

# Install the pinned Playwright once (tests/pinned-venv.sh).
source "$root/tests/pinned-venv.sh"
pinned_venv "$uienv" "$requirements" Playwright

# The same for axe-core: installed again only when the pinned version is not
# the one in the prefix.
axe_js=$uinode/node_modules/axe-core/axe.min.js
axe_have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$uinode/node_modules/axe-core/package.json" 2>/dev/null | head -n 1 || true)
if [[ ! -f $axe_js || $axe_have != "$axe_version" ]]; then
    echo "installing axe-core $axe_version into $uinode" >&2
    start=$SECONDS
    mkdir -p "$uinode"
    npm install --prefix "$uinode" --no-audit --no-fund --no-save --loglevel=error \
        "axe-core@$axe_version" >&2
    echo "installed in $((SECONDS - start)) s" >&2
fi
if [[ ! -f $axe_js ]]; then
    echo "error: npm did not install $axe_js" >&2
    exit 1
fi
export AXE_JS=$axe_js

exec "$uienv/bin/python" "$here/ui_flows.py" "$bin"
