"""Every `run.py` command in the README's code blocks, and in the manual's pages (docs/*.md),
parses: a recipe that drifts from the command line fails here.

One process parses them all, in-process through `run.main`: `fit`, `validate`, `test` and
`audit` with `--print_config` (LightningCLI's own parse, which prints the configuration and
exits 0 without building anything); `submit` as it runs by default, which only prints the
scripts (after resolving the flags with `fit`'s parser); `study` through its own argument
parser, its YAML loader, and `fit --print_config` of every entry of the first seed with the
study's audit arguments given to `audit --print_config`. Commands built from shell variables
(`$CFG`, loops) are left out."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

import run

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> list[list[str]]:
    """The argument lists after `run.py` in the page's ```bash blocks (continuation lines joined,
    comments dropped, `a && b` split)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "run.py" not in words or any("$" in w for w in words):
                    continue
                out.append(words[words.index("run.py") + 1:])
    return out


ALL = [(f"{p.relative_to(ROOT)}: run.py {shlex.join(c)}", c) for p in PAGES for c in commands(p)]


def test_the_pages_hold_commands():
    readme = [c for name, c in ALL if name.startswith("README.md")]
    assert len(readme) >= 12 and {c[0] for c in readme} >= {"fit", "test", "audit", "submit", "study"}


def quiet_main(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run.main(argv)
        except SystemExit as stop:  # --print_config exits after printing
            code = stop.code
    return code or 0, out.getvalue() + err.getvalue()


def check(args: list[str]) -> None:
    sub, rest = args[0], args[1:]
    if sub in ("fit", "validate", "test", "audit"):
        code, text = quiet_main([sub, *rest, "--print_config"])
        assert code == 0 and "seed_everything" in text, text[-2000:]
    elif sub == "submit":
        flags = [a for a in rest if a != "--submit"]  # print the scripts; never queue them
        code, text = quiet_main(["submit", *flags])
        assert code == 0 and "#SBATCH" in text, text[-2000:]
    elif sub == "study":
        from study.runner import entry_argv, load_study, parser, select_seeds

        ns = parser().parse_args(rest)
        spec = select_seeds(load_study(ROOT / ns.config, ns.run_dir), ns.seeds)
        seed = (spec.get("seeds") or [None])[0]
        for entry in spec["entries"]:
            argv = entry_argv(spec, entry, seed)
            for cmd in (["fit", *argv], ["audit", *argv, *spec.get("audit_args", [])]):
                code, text = quiet_main([*cmd, "--print_config"])
                assert code == 0, f"entry {entry['name']}: {text[-2000:]}"
    else:
        pytest.fail(f"run.py {sub}: not a subcommand")


def test_every_command_parses(monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands name configs relative to the repository root
    failed = []
    for name, args in ALL:
        try:
            check(args)
        except AssertionError as err:
            failed.append(f"{name}\n    {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}")
    assert not failed, "commands in the docs that do not parse:\n" + "\n".join(failed)


def test_the_readme_is_a_front_page():
    """At most 350 lines, and how to read the quick start's table comes right after it."""
    lines = (ROOT / "README.md").read_text().splitlines()
    heading = lines.index("## How to read an audit")
    assert len(lines) <= 350 and heading < 120
    assert lines[:heading][::-1].index("```") < 4  # the quick start's output block ends just above
