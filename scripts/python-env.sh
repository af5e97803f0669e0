#!/usr/bin/env bash
# Creates or updates the Python environment (.venv at the repository root) used by the
# parity tests and the PyTorch benchmarks. Idempotent: pip runs only when
# scripts/python-requirements.txt changed since the last successful install.
# Prints one line saying what it did.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/scripts/python-requirements.txt"
stamp="$venv/.recast-requirements.sha256"

created=""
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    created="created $venv; "
fi

wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    echo "${created}$venv is up to date with scripts/python-requirements.txt"
    exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --requirement "$requirements" >"$log" 2>&1; then
    cat "$log" >&2
    echo "pip install -r scripts/python-requirements.txt failed" >&2
    exit 1
fi
echo "$wanted" >"$stamp"
echo "${created}installed scripts/python-requirements.txt into $venv"
