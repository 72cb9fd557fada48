"""Every number in a table of a committed results page (docs/results/*/README.md) is in the
files it was read from, to the digits shown.

Each table is preceded by a comment that names its source, relative to the page's folder:

    <!-- numbers: report.json summary -->          numbers of report.json (here its `summary`)
    <!-- numbers: a/latency_x.md, latency_y.md --> numbers printed in these Markdown reports
    <!-- numbers: derived complement_shift -->     computed here from the two study reports

A number with d decimals matches a value of the source that rounds to it at d decimals. Cells
that are words (entry names, verdicts, findings) are not read. A table with no such comment
fails, so a new table cannot go unchecked."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
PAGES = sorted(RESULTS.glob("*/README.md"))
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?")
NUMERIC_CELL = re.compile(r"^[-+−\d.\[\], →]+$")  # numbers, intervals, "a → b"


def tables(page: Path) -> list[tuple[str | None, list[list[str]]]]:
    """(source comment or None, rows of cells without the header) for each table of the page."""
    lines, out = page.read_text(encoding="utf-8").splitlines(), []
    for i, line in enumerate(lines):
        if re.match(r"^\|\s*-", line):  # the header's separator row
            above = [x for x in lines[max(0, i - 4):i - 1] if x.strip()]
            spec = re.match(r"<!-- numbers: (.*?) -->", above[-1]) if above else None
            rows = []
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            out.append((spec.group(1) if spec else None, rows))
    return out


def tokens(rows: list[list[str]]) -> list[str]:
    """The numbers of the numeric cells, the first (label) column left out."""
    return [t for row in rows for cell in row[1:] if NUMERIC_CELL.match(cell) for t in NUMBER.findall(cell)]


def json_values(node) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, (int, float)):
        return [float(node)]
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [v for x in node for v in json_values(x)]
    return []


def shown(value: float, token: str) -> bool:
    """Does `value` round to `token` at the token's number of decimals?"""
    token = token.replace("−", "-").lstrip("+")
    digits = len(token.split(".")[1]) if "." in token else 0
    text = f"{value:.{digits}f}"
    return text == token or (float(token) == 0 and float(text) == 0)  # -0.000 and 0.000


def rotated_mean(seeds: dict, attack: str) -> float:
    """Mean over the seeds of the mean AUC of targets 1..K."""
    return statistics.mean(statistics.mean(t["attacks"][attack]["auc"] for k, t in s["targets"].items() if k != "0")
                           for s in seeds.values())


def complement_shift(folder: Path) -> list[float]:
    """The complement table's numbers: per entry and attack, targets 1..K's AUC with the complement
    (report.json) and without it (exclude_complement/report.json), and model 0's AUC."""
    biased = json.loads((folder / "report.json").read_text())["entries"]
    unbiased = json.loads((folder / "exclude_complement" / "report.json").read_text())["entries"]
    out = []
    for name, entry in biased.items():
        if len(next(iter(entry["seeds"].values()))["targets"] or {}) < 2:
            continue  # one target: nothing rotated
        for attack in ("rmia_offline", "rmia_online", "lira_online"):
            out += [rotated_mean(entry["seeds"], attack), rotated_mean(unbiased[name]["seeds"], attack),
                    statistics.mean(s["targets"]["0"]["attacks"][attack]["auc"] for s in entry["seeds"].values())]
    return out


def source_values(folder: Path, spec: str) -> tuple[list[float], list[str]]:
    """(values of the JSON or derived sources, number tokens printed in the Markdown sources)."""
    if spec == "derived complement_shift":
        return complement_shift(folder), []
    values, printed = [], []
    for name, *section in (p.strip().split() for p in spec.split(",")):
        path = folder / name
        if name.endswith(".md"):
            printed += NUMBER.findall(path.read_text(encoding="utf-8"))
        else:
            node = json.loads(path.read_text())
            for key in section:
                node = node[key]
            values += json_values(node)
    return values, printed


CASES = [(f"{page.parent.name} table {n}", page, spec, rows)
         for page in PAGES for n, (spec, rows) in enumerate(tables(page), 1)]


def test_the_results_have_tables():
    assert len(PAGES) >= 2 and len(CASES) >= 9
    assert sum(len(tokens(rows)) for _, _, _, rows in CASES) > 400


@pytest.mark.parametrize("name,page,spec,rows", CASES, ids=[c[0] for c in CASES])
def test_every_table_number_is_in_its_source(name, page, spec, rows):
    assert spec, f"{name}: no <!-- numbers: ... --> comment naming where its numbers come from"
    values, printed = source_values(page.parent, spec)
    printed = {t.replace("−", "-").lstrip("+") for t in printed}
    missing = [t for t in tokens(rows)
               if t.replace("−", "-").lstrip("+") not in printed and not any(shown(v, t) for v in values)]
    assert tokens(rows), f"{name}: no numbers read"
    assert not missing, f"{name} ({spec}): not in the source to the digits shown: {missing}"
