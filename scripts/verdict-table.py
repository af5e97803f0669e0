#!/usr/bin/env python3
"""Writes the side-by-side verdict table of docs/results.md from the results pages.

Every criterion of every experiment is one row; its columns are the verdict on the
built-in data (docs/results/NAME/), on real text (docs/results/real/NAME/) and, for the
claims that also run at a larger model, at that scale (docs/results/NAME-large/), each
with the paired effect ± its standard error. The table replaces what stands between the
`<!-- verdicts:begin -->` and `<!-- verdicts:end -->` lines of docs/results.md.

    python3 scripts/verdict-table.py [--results docs/results.md]
"""
import argparse
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"


def verdicts(page: Path) -> dict:
    """criterion text -> (verdict, window, paired effect) from one results page."""
    if not page.exists():
        return {}
    rows, inside = {}, False
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Verdicts"
            continue
        if not inside or not line.startswith("| **"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 4:
            continue
        verdict, says, window, figures = cells[0].strip("*"), cells[1], cells[2], " | ".join(cells[3:])
        paired = figures.split("paired by seed: ", 1)[1] if "paired by seed: " in figures else figures
        paired = re.sub(r" \((\d+) seeds?, effect ± standard error\)", r" (\1 seeds)", paired)
        rows[says] = (verdict, window, paired)
    return rows


def cell(entry) -> str:
    if entry is None:
        return "—"
    verdict, _, paired = entry
    return f"**{verdict}**: {paired}"


def table(docs: Path) -> str:
    names = sorted(p.parent.name for p in docs.glob("*/results.md") if p.parent.name != "real" and not p.parent.name.endswith("-large"))
    lines = [
        "| experiment | criterion | read in | built-in data | real text | larger model |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        builtin = verdicts(docs / name / "results.md")
        real = verdicts(docs / "real" / name / "results.md")
        large = verdicts(docs / f"{name}-large" / "results.md")
        for says, entry in builtin.items():
            window = entry[1]
            link = f"[{name}](results/{name}/results.md)"
            lines.append(f"| {link} | {says} | {window} | {cell(entry)} | {cell(real.get(says))} | {cell(large.get(says)) if large else '—'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args()
    page = args.results.read_text()
    if BEGIN not in page or END not in page:
        print(f"{args.results}: no {BEGIN} … {END} lines to replace", file=sys.stderr)
        return 1
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.results.write_text(f"{head}{BEGIN}\n{table(args.results.parent / 'results')}\n{END}{tail}")
    print(f"{args.results}: verdict table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
