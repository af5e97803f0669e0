#!/usr/bin/env bash
# Regenerates docs/results/: runs every experiment in experiments/ (or the ones named
# as arguments, by file stem) at full size from scratch, then copies each results page,
# table and plots into docs/results/<name>/ and records the wall time in
# docs/results/times.tsv. The training runs themselves stay in runs/experiments/.
#
#   bash scripts/reproduce-claims.sh                     # all of them
#   bash scripts/reproduce-claims.sh innovator ultrafuser
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p recast-host
recast=target/release/recast
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in experiments/*.toml; do names+=("$(basename "$f" .toml)"); done
fi
mkdir -p docs/results
touch docs/results/times.tsv
for name in "${names[@]}"; do
    file="experiments/$name.toml"
    [ -f "$file" ] || { echo "no experiment $file" >&2; exit 1; }
    out="runs/experiments/$name"
    rm -rf "$out"
    start=$(date +%s)
    "$recast" experiment "$file" --out "$out"
    seconds=$(( $(date +%s) - start ))
    rm -rf "docs/results/$name"
    mkdir -p "docs/results/$name"
    cp "$out"/results.md "$out"/results.csv "$out"/*.png "docs/results/$name/"
    grep -v "^$name	" docs/results/times.tsv > docs/results/times.tsv.new || true
    printf '%s\t%s\t%s\n' "$name" "$seconds" "$(nproc) cores" >> docs/results/times.tsv.new
    sort -o docs/results/times.tsv docs/results/times.tsv.new
    rm docs/results/times.tsv.new
    echo "$name: ${seconds} s"
done
