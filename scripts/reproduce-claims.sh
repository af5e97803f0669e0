#!/usr/bin/env bash
# Regenerates docs/results/: runs every experiment in experiments/ (or the ones named
# as arguments, by file stem) at full size from scratch, then copies each results page,
# table and plots into docs/results/<name>/ and records the wall time in
# docs/results/times.tsv. The training runs themselves stay in runs/experiments/.
# With `--data real`, the code and prose domains are real text instead of the built-in
# generators (scripts/real-corpora.sh prepares data/real once: Python standard-library
# sources and manual pages), and everything goes to runs/experiments-real/ and
# docs/results/real/. The *-large experiments (a second, larger model for two claims)
# run with the built-in data only unless named.
#
#   bash scripts/reproduce-claims.sh                     # all of them
#   bash scripts/reproduce-claims.sh innovator ultrafuser
#   bash scripts/reproduce-claims.sh --data real [NAME...]
set -euo pipefail
cd "$(dirname "$0")/.."

data=builtin
if [[ ${1:-} == --data ]]; then
    data=${2:?--data takes builtin or real}
    shift 2
fi
case "$data" in
    builtin) runs=runs/experiments; docs=docs/results; data_args=() ;;
    real)
        runs=runs/experiments-real; docs=docs/results/real
        [[ -f data/real/code/meta.json && -f data/real/prose/meta.json ]] || bash scripts/real-corpora.sh --out data/real
        data_args=(--data code=data/real/code --data prose=data/real/prose) ;;
    *) echo "--data $data: expected builtin or real" >&2; exit 2 ;;
esac

cargo build --release -q -p recast-host
recast=target/release/recast
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in experiments/*.toml; do
        name=$(basename "$f" .toml)
        # The second scale (*-large) asks whether a verdict survives a larger model, on
        # the built-in data; name one to run it on real text too.
        [[ $data == real && $name == *-large ]] && continue
        names+=("$name")
    done
fi
total_start=$(date +%s)
mkdir -p "$docs"
touch "$docs/times.tsv"
for name in "${names[@]}"; do
    file="experiments/$name.toml"
    [ -f "$file" ] || { echo "no experiment $file" >&2; exit 1; }
    out="$runs/$name"
    rm -rf "$out"
    start=$(date +%s)
    "$recast" experiment "$file" --out "$out" "${data_args[@]}"
    seconds=$(( $(date +%s) - start ))
    rm -rf "${docs:?}/$name"
    mkdir -p "$docs/$name"
    cp "$out"/results.md "$out"/results.csv "$out"/*.png "$out"/*.svg "$docs/$name/"
    grep -v "^$name	" "$docs/times.tsv" > "$docs/times.tsv.new" || true
    printf '%s\t%s\t%s\n' "$name" "$seconds" "$(nproc) cores" >> "$docs/times.tsv.new"
    sort -o "$docs/times.tsv" "$docs/times.tsv.new"
    rm "$docs/times.tsv.new"
    echo "$name: ${seconds} s"
done
echo "all ${#names[@]}: $(( $(date +%s) - total_start )) s on $(nproc) cores"
# The side-by-side verdict table of docs/results.md (built-in, real text, larger model).
python3 scripts/verdict-table.py --results docs/results.md
