"""`python run.py study --config configs/study/digits.yaml`: several run.py runs, one report.

A study YAML (see configs/study/*.yaml):

    name: digits                       # optional label
    run_dir: runs/study_digits         # each entry trains into run_dir/<entry name>/
    base_args: [...]                   # run.py flags given to every entry
    entries:                           # one run.py run each; ${run_dir} in args is the study's run_dir
      - {name: ann, args: [--model.kind, ann]}
      - {name: snn_T1, args: [--model.kind, snn, --model.T, "1"]}
    audit_args: [--queries, "[plain, 'dropout:p=0.01,n=10']"]   # given to every `run.py audit`

For each entry, in order: `run.py fit <base_args> <args> --run_dir run_dir/<name>` (finished
models are skipped, so a rerun trains nothing), a check that its plan.json equals the first
entry's (same seed, K, population, audit set), then `run.py audit <base_args> <args> <audit_args>
--run_dir run_dir/<name>` (signals come from the cache on a rerun). Then run_dir/study/ gets
report.json (every entry's attacks, target, settings, curves), report.md (one row per entry),
leakage_vs_T.png, roc_overlay.png, auc_per_epoch.png, and leakage_vs_epsilon.png when an entry
was trained with DP (model.dp). How each entry was made
(init, references overrides) is read from its model_0/done.json. Exit codes: 0 done, 2 bad study file or flag (one line,
nothing written), 1 a run failed or the plans differ (one line naming the entry).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from audit.report import tables_off
from core.rundir import atomic_write

from .verdicts import aggregate

STUDY_KEYS = {"name", "run_dir", "base_args", "entries", "audit_args", "seeds"}
ENTRY_KEYS = {"name", "args"}
MAIN_ATTACKS = ("attack_p", "attack_r", "rmia_offline", "lira_online")
METRICS = (("auc", "AUC"), ("tpr@1%fpr", "TPR@1%FPR"), ("tpr@0.1%fpr", "TPR@0.1%FPR"))
ROC_ATTACK = "rmia_offline"
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class StudyError(ValueError):
    """A bad study file or flag (exit 2)."""


class StudyFailure(RuntimeError):
    """A run failed or the entries disagree (exit 1)."""


# -- the study file ---------------------------------------------------------------------------
def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise StudyError(f"{where}: expected a list of strings, got {value!r}")
    out = [str(v) if not isinstance(v, bool) else str(v).lower() for v in value]
    for flag in out:
        if flag == "--run_dir" or flag.startswith("--run_dir="):
            raise StudyError(f"{where}: --run_dir is set by the study (run_dir/<entry name>); remove it")
    return out


def load_study(path: str | Path, run_dir: str | None = None) -> dict:
    """Parse and validate a study YAML; raises StudyError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study config {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(f"study config {str(path)!r} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"study config {str(path)!r}: expected a mapping with keys {sorted(STUDY_KEYS)}")
    unknown = sorted(set(raw) - STUDY_KEYS, key=str)
    if unknown:
        raise StudyError(f"study config {str(path)!r}: unknown key {unknown[0]!r}; allowed: {sorted(STUDY_KEYS)}")
    rd = run_dir if run_dir is not None else raw.get("run_dir")
    if not isinstance(rd, str) or not rd.strip():
        raise StudyError(f"study config {str(path)!r}: run_dir must be a non-empty path, got {rd!r}")
    entries = raw.get("entries")
    if not isinstance(entries, list) or not entries:
        raise StudyError(f"study config {str(path)!r}: entries must be a non-empty list")
    seen: set[str] = set()
    parsed = []
    for i, entry in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected a mapping with keys {sorted(ENTRY_KEYS)}, got {entry!r}")
        bad = sorted(set(entry) - ENTRY_KEYS, key=str)
        if bad:
            raise StudyError(f"{where}: unknown key {bad[0]!r}; allowed: {sorted(ENTRY_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise StudyError(f"{where}.name: expected a non-empty string, got {name!r}")
        if not NAME_RE.match(name) or name in (".", "..", "study"):
            raise StudyError(f"{where}.name={name!r}: use letters, digits and _ . + - only "
                             "(it names a folder; no '/', not 'study')")
        if name in seen:
            raise StudyError(f"{where}.name={name!r}: duplicate entry name")
        seen.add(name)
        parsed.append({"name": name, "args": _str_list(entry.get("args"), f"{where}.args")})
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        raise StudyError(f"study config {str(path)!r}: name must be a string, got {name!r}")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
                              or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds)):
        raise StudyError(f"study config {str(path)!r}: seeds must be a list of distinct integers >= 0, e.g. [0, 1, 2], "
                         f"got {seeds!r}")
    base, audit_args = _str_list(raw.get("base_args"), "base_args"), _str_list(raw.get("audit_args"), "audit_args")
    for flag in ("--data.seed", "--seed_everything"):
        if seeds is not None and any(a == flag or a.startswith(flag + "=") for e in parsed for a in [*base, *e["args"]]):
            raise StudyError(f"study config {str(path)!r}: {flag} is set per seed by `seeds`; remove it from the args")
    return {"name": name, "run_dir": rd, "entries": parsed, "seeds": seeds, "base_args": base, "audit_args": audit_args}


def seed_dir(spec: dict, seed: int | None) -> Path:
    """Where one seed's runs go: run_dir/seed_<s>/ with seeds, run_dir/ without."""
    return Path(spec["run_dir"]) / f"seed_{seed}" if seed is not None else Path(spec["run_dir"])


def entry_argv(spec: dict, entry: dict, seed: int | None) -> list[str]:
    """The run.py flags of one entry for one seed: ${run_dir} is that seed's folder (so a
    converted chain starts from the same seed's models), and the plan and model seeds are
    both the seed."""
    root = str(seed_dir(spec, seed))
    argv = [a.replace("${run_dir}", root) for a in [*spec["base_args"], *entry["args"]]]
    if seed is not None:
        argv += ["--data.seed", str(seed), "--seed_everything", str(seed)]
    return [*argv, "--run_dir", str(Path(root) / entry["name"])]


# -- running ----------------------------------------------------------------------------------
def _run(step: str, entry: str, argv: list[str]) -> None:
    from training.cli import run_cli

    print(f"study: {entry}: python run.py {shlex.join([step, *argv])}", file=sys.stderr, flush=True)
    try:
        with tables_off():  # the study prints its own table at the end
            code = run_cli([step, *argv])
    except SystemExit as err:  # jsonargparse exits on a bad flag
        code = err.code if isinstance(err.code, int) else 1
    except Exception as err:  # noqa: BLE001 - one line naming the entry, not a traceback
        text = str(err).strip().splitlines()
        raise StudyFailure(f"entry {entry!r}: run.py {step} failed: {type(err).__name__}: "
                           f"{text[0] if text else ''}") from err
    if code:
        raise StudyFailure(f"entry {entry!r}: run.py {step} exited with code {code}")


def _plan_of(entry_dir: Path, entry: str) -> dict:
    path = entry_dir / "plan.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StudyFailure(f"entry {entry!r}: cannot read {path}: {err}") from None


def _report_of(entry_dir: Path, entry: str) -> dict:
    path = entry_dir / "audit" / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StudyFailure(f"entry {entry!r}: cannot read {path}: {err}") from None


def _facts_of(entry_dir: Path, entry: str) -> dict:
    """How the entry's target was made, as its done.json records it: init (scratch or
    converted) and the references overrides of its run."""
    from core.rundir import read_done

    try:
        return read_done(entry_dir, 0)
    except ValueError as err:
        raise StudyFailure(f"entry {entry!r}: {err}") from None


# -- the combined report ----------------------------------------------------------------------
def main_attack_names(reports: dict[str, dict]) -> list[str]:
    """rmia_offline etc. and their @dropout variants, in MAIN_ATTACKS order, present in any entry."""
    present = {n for r in reports.values() for n in r.get("attacks", {})}
    names = []
    for base in MAIN_ATTACKS:
        names += [base] if base in present else []
        names += sorted(n for n in present if n.startswith(base + "@dropout"))
    return names


def _refs_text(e: dict) -> str:
    """', refs kind=ann' for an entry with --references overrides, '' otherwise."""
    refs = e.get("references")
    return ", refs " + " ".join(f"{k}={v}" for k, v in refs.items()) if refs else ""


def _dp_text(e: dict) -> str:
    """', DP eps=0.99' for a target trained with DP-SGD (the accountant's epsilon), '' otherwise."""
    dp = e["target"].get("dp")
    return f", DP eps={dp['epsilon']:.3g}" if dp else ""


def _label(e: dict) -> str:
    t = e["target"]
    kind = t.get("kind", "?")
    text = f"{kind}{' converted' if e['converted'] else ''}"
    if kind == "snn" and t.get("T") is not None:
        text += f" T={t['T']}"
    return text + _dp_text(e) + _refs_text(e)


def markdown(study: dict) -> str:
    """One table per query setting (plain first, then each input-dropout setting): rows are
    the entries, columns test accuracy, the distinct-confidence fraction under that setting,
    and every main attack's AUC, TPR@1%FPR and TPR@0.1%FPR."""
    entries, attacks = study["entries"], study["main_attacks"]
    lines = [f"# Study: {study['name']}", "",
             f"{len(entries)} entries on one membership plan: "
             + ", ".join(f"{k}={v}" for k, v in study["plan"].items()) + ".", ""]
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    for setting in settings:
        here = [a for a in attacks if _split(a)[1] == setting]
        if len(settings) > 1:
            lines += [f"## Queries: {setting}", ""]
        head = ["entry", "model", "test acc", "distinct conf."]
        head += [f"{_split(a)[0]} {h}" for a in here for _, h in METRICS]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, e in entries.items():
            t = e["target"]
            dc = (t.get("distinct_confidences") or {}).get(setting)
            row = [name, _label(e), f"{t['test_acc']:.4f}" if "test_acc" in t else "",
                   f"{dc:.3f}" if dc is not None else ""]
            for a in here:
                m = e["attacks"].get(a, {})
                row += [("n/a" if m[k] is None else f"{m[k]:.4f}") if k in m else "" for k, _ in METRICS]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["distinct conf.: distinct target confidences / N under that query setting (low = many ties).",
              "Plots: leakage_vs_T.png (AUC and TPR@0.1%FPR against T; ANN as a horizontal line), "
              f"roc_overlay.png ({ROC_ATTACK}, log-log), auc_per_epoch.png ({ROC_ATTACK} AUC per training epoch). Every entry's report: <run_dir>/<entry>/audit/.", ""]
    return "\n".join(lines)


def table(study: dict, width: int | None = None) -> str:
    """The study's table for the terminal: per query setting, each entry's test accuracy and
    the main attacks' AUC (and offline RMIA's TPR at 1% FPR), no wider than the terminal
    (columns that do not fit are left out and named); report.md has every column."""
    import shutil

    width = width or shutil.get_terminal_size((120, 24)).columns
    entries, attacks = study["entries"], study["main_attacks"]
    out = []
    for setting in list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]:
        here = [a for a in attacks if _split(a)[1] == setting]
        cols = [("test acc", lambda e: e["target"].get("test_acc"))]
        cols += [(f"{_split(a)[0]} AUC", lambda e, a=a: e["attacks"].get(a, {}).get("auc")) for a in here]
        cols += [(f"{_split(a)[0]} TPR@1%", lambda e, a=a: e["attacks"].get(a, {}).get("tpr@1%fpr"))
                 for a in here if _split(a)[0] == ROC_ATTACK]
        labels = {name: _label(e) for name, e in entries.items()}
        w0, w1 = max(5, *map(len, entries)) + 2, max(5, *map(len, labels.values())) + 2
        fits, used = [], w0 + w1
        for head, get in cols:
            w = max(len(head), 6) + 2
            if used + w > width:
                break
            fits.append((head, get, w))
            used += w
        out.append(f"queries: {setting}")
        out.append(f"{'entry':<{w0}}{'model':<{w1}}" + "".join(f"{h:>{w}}" for h, _, w in fits))
        for name, e in entries.items():
            vals = [get(e) for _, get, _ in fits]
            out.append(f"{name:<{w0}}{labels[name]:<{w1}}"
                       + "".join(f"{('n/a' if v is None else f'{v:.4f}'):>{w}}" for v, (_, _, w) in zip(vals, fits)))
        if len(fits) < len(cols):
            out.append(f"(not shown, too wide for {width} columns: {', '.join(h for h, _ in cols[len(fits):])}; "
                       "every column is in report.md)")
        out.append("")
    return "\n".join(out).rstrip()


def _split(attack: str) -> tuple[str, str]:
    base, _, setting = attack.partition("@")
    return base, setting or "plain"


def plot_leakage_vs_T(study: dict, path: Path) -> None:
    """One panel per (metric, query setting); one colour per attack; SNN entries as lines over T
    (solid: trained from scratch, dashed: converted), ANN entries as dotted horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries, attacks = study["entries"], study["main_attacks"]
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    metrics = (("auc", "AUC"), ("tpr@0.1%fpr", "TPR@0.1%FPR"))
    fig, axes = plt.subplots(len(metrics), len(settings), figsize=(5.2 * len(settings), 7.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases = list(dict.fromkeys(_split(a)[0] for a in attacks))
    ts = sorted({e["target"]["T"] for e in entries.values() if e["target"].get("kind") == "snn"
                 and e["target"].get("T") is not None})
    for row, (metric, title) in enumerate(metrics):
        for col, setting in enumerate(settings):
            ax = axes[row][col]
            for a in attacks:
                base, s = _split(a)
                if s != setting:
                    continue
                color = colors[bases.index(base) % len(colors)]
                groups: dict[str, list] = {}
                for name, e in entries.items():
                    m = e["attacks"].get(a)
                    if m is None or m.get(metric) is None:  # absent, or below this audit's resolution
                        continue
                    t = e["target"]
                    refs = _dp_text(e) + _refs_text(e)  # a DP target is a series of its own
                    if t.get("kind") == "ann":
                        ax.axhline(m[metric], color=color, linestyle=":", linewidth=1.4, label=f"{base} ANN{refs}")
                    elif t.get("T") is not None:
                        group = ("SNN converted" if e["converted"] else "SNN") + refs
                        groups.setdefault(group, []).append((t["T"], m[metric]))
                for g, pts in groups.items():
                    pts.sort()
                    style = {"SNN": ("o", "-"), "SNN converted": ("s", "--")}.get(g, ("^", "-."))
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=style[0], markersize=7 if len(pts) == 1 else 5,
                            linestyle=style[1], color=color, label=f"{base} {g}")
            if ts:
                ax.set_xticks(ts)
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(title)
            ax.set_title(f"{title}, query {setting}", fontsize=10)
            ax.grid(alpha=0.3)
            if row == 0 and col == len(settings) - 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Study {study['name']}: leakage against T (ANN dotted)")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_leakage_vs_epsilon(study: dict, path: Path) -> None:
    """For a study with DP entries: AUC and TPR@0.1%FPR against the accountant's epsilon (log
    axis; entries trained without DP at the right, as inf), one panel per (metric, query
    setting), a colour per attack, a line per model (kind, T, references; ANN dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries, attacks = study["entries"], study["main_attacks"]
    eps = [e["target"]["dp"]["epsilon"] for e in entries.values() if e["target"].get("dp")]
    inf_x = max(eps) * 4  # where "no DP" sits on the log axis
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    metrics = (("auc", "AUC"), ("tpr@0.1%fpr", "TPR@0.1%FPR"))
    fig, axes = plt.subplots(len(metrics), len(settings), figsize=(5.2 * len(settings), 7.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases = list(dict.fromkeys(_split(a)[0] for a in attacks))
    for row, (metric, title) in enumerate(metrics):
        for col, setting in enumerate(settings):
            ax = axes[row][col]
            for a in (a for a in attacks if _split(a)[1] == setting):
                base = _split(a)[0]
                lines: dict[str, list] = {}
                for e in entries.values():
                    m = e["attacks"].get(a)
                    if m is None or metric not in m:
                        continue
                    t, dp = e["target"], e["target"].get("dp")
                    model = (f"{t.get('kind', '?').upper()}{' converted' if e['converted'] else ''}"
                             + (f" T={t['T']}" if t.get("kind") == "snn" and t.get("T") is not None else "")
                             + _refs_text(e))
                    lines.setdefault(model, []).append((dp["epsilon"] if dp else inf_x, m[metric]))
                for model, pts in lines.items():
                    pts.sort()
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if "SNN" in model else "s",
                            linestyle="-" if "SNN" in model else ":", color=colors[bases.index(base) % len(colors)],
                            label=f"{base} {model}")
            ax.set_xscale("log")
            ticks = sorted(set(eps))
            ax.set_xticks(ticks + [inf_x], [f"{v:.3g}" for v in ticks] + ["no DP"])
            ax.set_xlabel("epsilon (accountant, after training)")
            ax.set_ylabel(title)
            ax.set_title(f"{title}, query {setting}", fontsize=10)
            ax.grid(alpha=0.3)
            if row == 0 and col == len(settings) - 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Study {study['name']}: leakage against DP-SGD's epsilon")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_roc_overlay(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    positive = [v for e in study["entries"].values() for v in e["curves"].get(ROC_ATTACK, {}).get("fpr", []) if v > 0]
    floor = min(positive) / 2 if positive else 1e-4
    for name, e in study["entries"].items():
        c = e["curves"].get(ROC_ATTACK)
        if not c:
            continue
        fpr = [max(v, floor) for v in c["fpr"]]
        tpr = [max(v, floor) for v in c["tpr"]]
        auc = e["attacks"].get(ROC_ATTACK, {}).get("auc")
        ax.plot(fpr, tpr, label=f"{name} ({_label(e)})" + (f", AUC {auc:.3f}" if auc is not None else ""))
    ax.plot([floor, 1], [floor, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("FPR")
    ax.set_ylabel("TPR")
    ax.set_title(f"{ROC_ATTACK} ROC, every entry")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def plot_epochs(study: dict, path: Path) -> None:
    """The target's attack AUC at every audited epoch (the MembershipAttack history), one
    line per entry: how leakage builds up during training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, e in study["entries"].items():
        points = [(h["epoch"], h["attacks"][ROC_ATTACK]["auc"]) for h in e.get("history", [])
                  if ROC_ATTACK in h.get("attacks", {})]
        if points:
            ax.plot([p[0] + 1 for p in points], [p[1] for p in points], marker="o", markersize=3,
                    label=f"{name} ({_label(e)})")
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ROC_ATTACK} AUC")
    ax.set_title(f"{ROC_ATTACK} AUC of the target during training")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def write_study_report(spec: dict, plans: dict, reports: dict[tuple, dict], facts: dict[tuple, dict]) -> dict:
    out = Path(spec["run_dir"]) / "study"
    seeds = spec.get("seeds") or [None]
    first = seeds[0]
    args = {e["name"]: e["args"] for e in spec["entries"]}
    entries = {}
    for e in spec["entries"]:
        name = e["name"]
        r, f = reports[name, first], facts[name, first]
        entries[name] = {"args": args[name], "converted": f.get("init") == "converted",
                         "references": f.get("references") or None,
                         "run_dir": str(seed_dir(spec, first) / name),
                         "target": r.get("target", {}), "attacks": r.get("attacks", {}),
                         "skipped": r.get("skipped", {}), "settings": r.get("settings", {}),
                         "curves": r.get("curves", {}), "history": r.get("history", []),
                         "seeds": {str(seed): {k: reports[name, seed].get(k) for k in
                                               ("target", "attacks", "targets", "across_targets", "history")}
                                   for seed in seeds}}
    study = {
        "name": spec["name"],
        "run_dir": spec["run_dir"],
        "seeds": spec.get("seeds"),
        "plan": plans[first],
        "plans": {str(seed): plan for seed, plan in plans.items()},
        "base_args": spec["base_args"],
        "audit_args": spec["audit_args"],
        "main_attacks": main_attack_names({name: e for name, e in entries.items()}),
        "entries": entries,
    }
    study.update(aggregate(study))
    atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(study, indent=1) + "\n"))
    atomic_write(out / "report.md", lambda p: p.write_text(markdown(study)))
    plot_leakage_vs_T(study, out / "leakage_vs_T.png")
    if any(e["target"].get("dp") for e in study["entries"].values()):
        plot_leakage_vs_epsilon(study, out / "leakage_vs_epsilon.png")
    plot_roc_overlay(study, out / "roc_overlay.png")
    plot_epochs(study, out / "auc_per_epoch.png")
    return study


# -- CLI --------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (not argparse's usage block)
        raise StudyError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py study", description="Train and audit a matrix of run.py runs on one "
                "membership plan; write run_dir/study/report.{json,md} and plots.")
    p.add_argument("--config", required=True, help="study YAML (configs/study/*.yml)")
    p.add_argument("--run_dir", default=None, help="override the study file's run_dir")
    return p


def run_study(spec: dict) -> dict:
    """Every entry for every seed, in order (a whole seed first, so a converted chain finds the
    same seed's models, and an interrupted study has complete seeds); then the report."""
    seeds = spec.get("seeds") or [None]
    plans, reports, facts = {}, {}, {}
    total, n = len(seeds) * len(spec["entries"]), 0
    for seed in seeds:
        plan0, first = None, None
        for e in spec["entries"]:
            n += 1
            name = e["name"]
            tag = name if seed is None else f"{name} (seed {seed})"
            print(f"study {spec['name']}: entry {n} of {total}: {tag}", file=sys.stderr, flush=True)
            argv = entry_argv(spec, e, seed)
            run_dir = Path(argv[-1])
            _run("fit", tag, argv)
            plan = _plan_of(run_dir, tag)
            if plan0 is None:
                plan0, first = plan, name
            elif plan != plan0:
                diff = sorted(k for k in set(plan) | set(plan0) if plan.get(k) != plan0.get(k))
                raise StudyFailure(f"entry {tag!r}: membership plan differs from entry {first!r}'s in "
                                   + ", ".join(f"{k} ({plan.get(k)!r} vs {plan0.get(k)!r})" for k in diff)
                                   + "; every entry must use the same data settings")
            fact = _facts_of(run_dir, tag)
            # Every model in turn as the target, unless the references differ from the target.
            rotate = [] if fact.get("references") else ["--targets", "all"]
            audit_args = [a.replace("${run_dir}", str(seed_dir(spec, seed))) for a in spec["audit_args"]]
            _run("audit", tag, [*argv[:-2], *audit_args, *rotate, "--run_dir", str(run_dir)])
            reports[name, seed] = _report_of(run_dir, tag)
            facts[name, seed] = fact
        plans[seed] = plan0
    return write_study_report(spec, plans, reports, facts)


def study_main(argv: list[str]) -> int:
    """`run.py study --config FILE [--run_dir DIR]`: 0 done, 2 bad input (nothing written), 1 a run failed."""
    try:
        flags = parser().parse_args(argv)
        spec = load_study(flags.config, flags.run_dir)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        study = run_study(spec)
    except StudyFailure as err:
        print(f"error: study {spec['name']!r}: {err}", file=sys.stderr)
        return 1
    print(table(study))
    print(f"study report: {Path(spec['run_dir']) / 'study' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(study_main(sys.argv[1:]))
