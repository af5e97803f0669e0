#!/usr/bin/env bash
# Prepares two real-text domains, offline and deterministic on a given machine, for
# `recast experiment --data` (scripts/reproduce-claims.sh --data real uses them):
#   code   the Python standard library's sources (the *.py files of python3's stdlib,
#          tests and vendored packages left out), in path order, up to --max-mib;
#   prose  the system's section-1 manual pages rendered as plain text (`man -P cat`,
#          80 columns, C locale), in name order, up to --max-mib.
# Each document is held out or kept whole (recast data prepare, byte tokenizer, seed 0,
# 5 % validation). Output: OUT/code and OUT/prose (default data/real).
#
#   bash scripts/real-corpora.sh [--out data/real] [--max-mib 8]
set -euo pipefail
cd "$(dirname "$0")/.."

out=data/real
max_mib=8
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --max-mib) max_mib="$2"; shift 2 ;;
        *) echo "unknown argument $1 (use --out DIR, --max-mib N)" >&2; exit 2 ;;
    esac
done
command -v python3 >/dev/null || { echo "python3 is needed for the code domain" >&2; exit 1; }
command -v man >/dev/null || { echo "man is needed for the prose domain (apt-get install man-db)" >&2; exit 1; }

recast=target/release/recast
[[ -x $recast ]] || cargo build --release -q -p recast-host
limit=$(( max_mib * 1024 * 1024 ))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# code: stdlib sources, sorted, copied until the limit.
stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mkdir -p "$work/code"
total=0
while IFS= read -r file; do
    size=$(stat -c %s "$file")
    (( total + size > limit )) && break
    total=$(( total + size ))
    rel=${file#"$stdlib"/}
    mkdir -p "$work/code/$(dirname "$rel")"
    cp "$file" "$work/code/$rel"
done < <(cd "$stdlib" && LC_ALL=C find . -name '*.py' -not -path '*/test/*' -not -path '*/tests/*' -not -path '*/site-packages/*' -not -path '*/idlelib/*' | LC_ALL=C sort | sed "s|^\.|$stdlib|")
echo "code: $(find "$work/code" -name '*.py' | wc -l) files, $total bytes from $stdlib"

# prose: section-1 manual pages as text, sorted by name, until the limit.
mkdir -p "$work/prose"
total=0
for page in $(LC_ALL=C ls /usr/share/man/man1 | sed -E 's/\.1[a-z]*(\.gz)?$//' | LC_ALL=C sort -u); do
    text=$(LC_ALL=C MANWIDTH=80 man -P cat 1 "$page" 2>/dev/null | col -b 2>/dev/null || true)
    [[ -n $text ]] || continue
    size=${#text}
    (( total + size > limit )) && break
    total=$(( total + size ))
    printf '%s\n' "$text" > "$work/prose/$page.txt"
done
echo "prose: $(ls "$work/prose" | wc -l) manual pages, $total characters"

rm -rf "$out"
"$recast" data prepare --out "$out" --domain "code=$work/code" --domain "prose=$work/prose" --include '*.py' --include '*.txt' --seed 0
