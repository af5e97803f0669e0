#!/usr/bin/env bash
# Installs the tools that build plugins written in Python and JavaScript, for this
# checkout only: componentize-py into .venv (through scripts/python-env.sh, with the
# parity tests' packages) and componentize-js + jco into scripts/js-tools/node_modules
# (npm ci from the committed lock file). Idempotent: npm runs only when the lock file
# changed since the last successful install. Rust plugins need none of this.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/python-env.sh"

js="$root/scripts/js-tools"
stamp="$js/node_modules/.recast-lock.sha256"
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is not installed: JavaScript plugins need Node.js 20+ and npm (e.g. apt-get install nodejs npm)" >&2
    exit 1
fi
wanted="$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "$js/node_modules is up to date with package-lock.json"
    exit 0
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! npm ci --prefix "$js" --no-audit --no-fund >"$log" 2>&1; then
    cat "$log" >&2
    echo "npm ci in scripts/js-tools failed" >&2
    exit 1
fi
echo "$wanted" >"$stamp"
echo "installed componentize-js and jco into $js/node_modules"
