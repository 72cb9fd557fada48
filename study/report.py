"""The study's combined report: run_dir/study/report.json and report.md (every entry's mean
and 95% interval over seeds x targets, the paper's findings with verdicts), and its plots:
leakage_vs_T.png (with error bars), leakage_vs_epsilon.png (DP entries), roc_overlay.png and
auc_per_epoch.png. With a DP entry or canaries, report.md has a DP audit table (`dp_audit` in
report.json): the accountant's epsilon beside the natural-data, black-box canary and white-box
canary bounds."""

from __future__ import annotations

import json
from pathlib import Path

from audit.attacks import REGISTRY, names_with
from audit.report import bar_point, dodged_errorbar
from core.rundir import atomic_write, study_dir

from .access import access_summary, plot_access
from .access import markdown as access_markdown
from .comparisons import markdown as comparisons_markdown
from .comparisons import summary as comparisons_summary
from .verdicts import aggregate, fmt, target_values

MAIN_ATTACKS = tuple(names_with("study"))  # the registered attacks that declare study = True
METRICS = (("auc", "AUC"), ("tpr@1%fpr", "TPR@1%FPR"), ("tpr@0.1%fpr", "TPR@0.1%FPR"))
ROC_ATTACK = names_with("headline")[0]


def main_attack_names(reports: dict[str, dict]) -> list[str]:
    """The study's attacks and their @dropout variants present in any entry, in registry order:
    the registered attacks that declare `study`, then any attack of a user's own (not registered)."""
    present = {n for r in reports.values() for n in r.get("attacks", {})}
    own = list(dict.fromkeys(n.split("@")[0] for r in reports.values() for n in r.get("attacks", {})
                             if n.split("@")[0] not in REGISTRY))
    names = []
    for base in (*MAIN_ATTACKS, *own):
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


def value(study: dict, name: str, attack: str, metric: str) -> dict | None:
    """An entry's number for one attack setting and metric: {mean, ci, ...} over seeds x targets
    (the study's summary), or the main target's number when the summary has none."""
    s = (study.get("summary") or {}).get(name, {}).get("attacks", {}).get(attack, {}).get(metric)
    if s:
        return s
    v = study["entries"][name]["attacks"].get(attack, {}).get(metric)
    return None if v is None else {"mean": v, "ci": None}


def accuracy(study: dict, name: str, key: str = "test_acc") -> dict | None:
    s = (study.get("summary") or {}).get(name, {}).get("accuracy", {}).get(key)
    if s:
        return s
    v = study["entries"][name]["target"].get(key)
    return None if v is None else {"mean": v, "ci": None}


def _basis(study: dict) -> str:
    seeds = study.get("seeds") or []
    if len(seeds) >= 2:
        return (f"mean over {len(seeds)} seeds x the targets of each run (every model audited in turn as the "
                f"target), and a 95% interval: Student t over the {len(seeds)} per-seed means (the seed is the "
                "independent unit; the targets of one seed share its plan)")
    return ("mean over the targets of the run (every model audited in turn as the target) and a 95% interval: "
            "Student t over the targets of one seed, which share a plan: a narrow interval, not a seed-to-seed one")


def markdown(study: dict) -> str:
    """The findings with verdicts, then one table per query setting (plain first, then each
    input-dropout setting): rows are the entries, columns test accuracy and the main attacks'
    AUC and TPR at low FPR, each a mean with its 95% interval."""
    entries, attacks = study["entries"], study["main_attacks"]
    seeds = study.get("seeds")
    lines = [f"# Study: {study['name']}", "",
             f"{len(entries)} entries" + (f", each trained and audited for seeds {seeds} (plan and model seeds)"
                                          if seeds else "") + "; the plan: "
             + ", ".join(f"{k}={v}" for k, v in study["plan"].items() if k not in ("seed", "content_sha256")) + ".", "",
             f"Every number: {_basis(study)}.", ""]
    found = study.get("findings") or []
    if found:
        lines += ["## The paper's findings", "",
                  "Paired differences on the same plan and seed, target by target (the AUC of one attack). "
                  "Verdict: holds / reversed when the 95% interval excludes 0 on the claimed / other side.", "",
                  "| finding | comparison | attack | difference in AUC [95% CI] | seeds | verdict |",
                  "|---|---|---|---|---|---|"]
        claims = {1: "1: leakage grows with T", 2: "2: dropout queries leak more", 3: "3: SNN not more private"}
        for f in found:
            lines.append(f"| {claims[f['finding']]} | {f['comparison']} | {f['attack']} | {fmt(f)} | "
                         f"{f['n_seeds']} | {f['verdict']} |")
        lines.append("")
    lines += accuracy_section(study)
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    for setting in settings:
        here = [a for a in attacks if _split(a)[1] == setting]
        metrics = [(k, h) for k, h in METRICS if any(value(study, n, a, k) for n in entries for a in here)]
        lines += [f"## Queries: {setting}", ""]
        head = ["entry", "model", "test acc", "distinct conf."] + [f"{_split(a)[0]} {h}" for a in here for _, h in metrics]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name, e in entries.items():
            dc = (e["target"].get("distinct_confidences") or {}).get(setting)
            row = [name, _label(e), fmt(accuracy(study, name)), f"{dc:.3f}" if dc is not None else ""]
            row += [fmt(value(study, name, a, k)) or "n/a" for a in here for k, _ in metrics]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += dp_section(study)
    lines += dp_audit_section(study)
    lines += comparisons_markdown(study)
    lines += access_markdown(study)
    lines += ["distinct conf.: distinct confidences of the first seed's main target / N under that query setting "
              "(low = many ties).",
              f"Plots: leakage_vs_T.png (AUC and TPR at low FPR against T, with 95% intervals; the ANN as a "
              f"band), roc_overlay.png ({ROC_ATTACK}, log-log, the first seed's main target), auc_per_epoch.png "
              f"({ROC_ATTACK} AUC per training epoch). Every entry's own report: <run_dir>[/seed_<s>]/<entry>/audit/.",
              ""]
    return "\n".join(lines)


def accuracy_section(study: dict) -> list[str]:
    """Each entry's train accuracy (on the target's members), test accuracy (on the population)
    and their gap, each a mean with its 95% interval on the study's basis: how well each model
    learned and how much it overfit, beside how much it leaks."""
    lines = ["## Accuracy", "",
             "train acc: on the target's own members; test acc: on the population (never trained on); "
             "gap: train - test, per target, then averaged.", "",
             "| entry | model | train acc | test acc | gap |", "|---|---|---|---|---|"]
    for name, e in study["entries"].items():
        cells = [fmt(accuracy(study, name, key)) or "n/a" for key in ("train_acc", "test_acc", "acc_gap")]
        lines.append(f"| {name} | {_label(e)} | " + " | ".join(cells) + " |")
    return lines + [""]


def largest_eps_lb(entry: dict) -> tuple[float, str] | None:
    """The largest empirical epsilon lower bound of an entry over every attack setting, target
    and seed, and where it came from ("rmia_offline, target 2, seed 0")."""
    best = None
    for seed, run in (entry.get("seeds") or {}).items():
        for m, attacks in target_values(run).items():
            for name, metrics in attacks.items():
                v = metrics.get("eps_lb") if isinstance(metrics, dict) else None
                if v is not None and (best is None or v > best[0]):
                    best = (float(v), f"{name}, target {m}" + (f", seed {seed}" if seed != "None" else ""))
    return best


def dp_section(study: dict) -> list[str]:
    """For a study with DP entries: each entry's accountant epsilon against the largest
    empirical lower bound any attack found, with the check that the bound stays below it."""
    entries = study["entries"]
    if not any(e["target"].get("dp") for e in entries.values()):
        return []
    lines = ["## DP: the accountant's epsilon against the empirical lower bound", "",
             "eps_lb: the largest of the audits' 95% lower bounds on epsilon (at the audit's delta) over every "
             "attack, query setting, target and seed. Each is a 95% bound on its own; the largest of many is "
             "not, so read it as an upper view of what the attacks show. A DP entry whose eps_lb exceeds its "
             "epsilon is flagged: a bug in the DP training, or a broken assumption.", "",
             "| entry | model | epsilon (accountant) | delta | noise multiplier | sample rate | steps | test acc "
             "| eps_lb (largest) | from | eps_lb <= epsilon |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in entries.items():
        dp = e["target"].get("dp")
        best = largest_eps_lb(e)
        lb = f"{best[0]:.3f}" if best else "n/a"
        where = best[1] if best and best[0] > 0 else "every attack: 0" if best else ""
        if dp:
            ok = "n/a" if best is None else "yes" if best[0] <= dp["epsilon"] + 1e-9 else "**NO: check the DP training**"
            cells = [f"{dp['epsilon']:.3g}", f"{dp['delta']:g}", f"{dp['noise_multiplier']:.3g}",
                     f"{dp['sample_rate']:.3g}", str(dp["steps"])]
        else:
            ok, cells = "(no DP)", ["inf (no DP)", "", "", "", ""]
        lines.append("| " + " | ".join([name, _label(e), *cells, fmt(accuracy(study, name)), lb, where, ok]) + " |")
    return lines + [""]


def _largest_of(attacks: dict) -> tuple[float, str] | None:
    """The largest eps_lb of one target's attack settings and the setting it came from."""
    best = None
    for name, metrics in attacks.items():
        v = metrics.get("eps_lb") if isinstance(metrics, dict) else None
        if v is not None and (best is None or v > best[0]):
            best = (float(v), name)
    return best


def _canary_facts(audit: dict | None, *keys: str) -> dict | None:
    return None if not audit else {k: audit.get(k) for k in ("count", *keys, "guesses", "correct", "eps_lb", "delta")}


def dp_audit_rows(study: dict) -> list[dict]:
    """The numbers of the DP audit table: one row per entry and seed, all of the main target
    (model 0, the model both canary audits score): the accountant's epsilon (target.dp), the
    natural-data eps_lb (largest over attack settings, for model 0 and over every target), the
    black-box canary audit (the entry report's `canary_audit`), the white-box one
    (target.dp.audit_canaries) with eps_lb / epsilon, and which bounds exceed epsilon. Empty when
    no entry has a DP claim or canaries."""
    out = []
    for name, e in study["entries"].items():
        fallback = {k: e.get(k) for k in ("target", "attacks", "canary_audit")}
        for seed, run in (e.get("seeds") or {"None": fallback}).items():
            run = run or fallback
            target = run.get("target") or e.get("target") or {}
            dp = target.get("dp")
            canary = run.get("canary_audit")
            white = (dp or {}).get("audit_canaries")
            values = target_values(run)
            main = int(target.get("index", 0))
            own = _largest_of(values.get(main) or run.get("attacks") or {})
            per_target = {m: _largest_of(attacks) for m, attacks in values.items()}
            every = max(((b[0], f"{b[1]}, target {m}") for m, b in per_target.items() if b), default=None)
            row = {"entry": name, "seed": None if seed == "None" else int(seed),
                   "epsilon": dp["epsilon"] if dp else None, "delta": dp["delta"] if dp else None,
                   "test_acc": target.get("test_acc"),
                   "natural_eps_lb": own[0] if own else None, "natural_from": own[1] if own else None,
                   "natural_eps_lb_every_target": every[0] if every else None,
                   "natural_every_target_from": every[1] if every else None,
                   "canary": _canary_facts(canary, "kind"), "whitebox": _canary_facts(white),
                   "whitebox_ratio": white["eps_lb"] / dp["epsilon"] if white and dp and dp["epsilon"] else None}
            if dp:
                bounds = {"natural": row["natural_eps_lb_every_target"], "black-box canaries": (canary or {}).get("eps_lb"),
                          "white-box canaries": (white or {}).get("eps_lb")}
                row["above_epsilon"] = [k for k, v in bounds.items() if v is not None and v > dp["epsilon"] + 1e-9]
            out.append(row)
    if not any(r["epsilon"] is not None or r["canary"] or r["whitebox"] for r in out):
        return []
    return out


def dp_audit_section(study: dict) -> list[str]:
    """The DP audit table (shown when an entry has a DP claim or canaries): per entry, the
    accountant's epsilon beside every empirical lower bound on it, natural data, black-box
    canaries and white-box gradient canaries, each of the main target."""
    rows = study.get("dp_audit") or dp_audit_rows(study)
    if not rows:
        return []
    seeds = len({r["seed"] for r in rows}) > 1

    def lb(v, audit=None):
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" ({audit['correct']} / {audit['guesses']})" if audit else "")

    lines = ["## DP audit: the accountant's epsilon against natural-data and canary bounds", "",
             "Every number is of the main target (model 0), the model both canary audits score, except the last "
             "natural eps_lb. natural eps_lb: the largest of model 0's 95% lower bounds over every attack and query setting (at the audit's delta), then the "
             "largest over every target; the largest of several is not itself a 95% bound. Black box: the one-run bound "
             "on the plan's canaries (data.canaries), scored by the target's confidence on each canary's label; white "
             "box: the one-run bound on the DP model's gradient canaries (model.dp.audit_canaries). Each canary bound is "
             "the final model's, 95% with the choice of guesses corrected for, at the DP model's delta (without DP, the "
             "audit's), with its right guesses / guesses. A DP entry with any bound above its epsilon is flagged.", "",
             "| entry | " + ("seed | " if seeds else "") + "model | epsilon (accountant) | test acc | natural eps_lb "
             "(model 0) | natural eps_lb (every target) | black-box canaries | black-box eps_lb | white-box canaries "
             "| white-box eps_lb | white-box eps_lb / epsilon | bounds <= epsilon |",
             "|---" * (12 + seeds) + "|"]
    for r in rows:
        e, c, w = study["entries"][r["entry"]], r["canary"], r["whitebox"]
        check = ("(no DP)" if r["epsilon"] is None else "yes" if not r["above_epsilon"]
                 else "**NO: " + ", ".join(r["above_epsilon"]) + "**")
        cells = [r["entry"], *([str(r["seed"])] if seeds else []), _label(e),
                 "inf (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.3g}",
                 "n/a" if r["test_acc"] is None else f"{r['test_acc']:.3f}",
                 lb(r["natural_eps_lb"]) + (f" ({r['natural_from']})" if r["natural_eps_lb"] else ""),
                 lb(r["natural_eps_lb_every_target"])
                 + (f" ({r['natural_every_target_from']})" if r["natural_eps_lb_every_target"] else ""),
                 f"{c['count']} {c['kind']}" if c else "none", lb(c["eps_lb"], c) if c else "n/a",
                 str(w["count"]) if w else "none", lb(w["eps_lb"], w) if w else "n/a",
                 "n/a" if r["whitebox_ratio"] is None else f"{r['whitebox_ratio']:.3f}", check]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _num(v: dict | None) -> str:
    return "n/a" if v is None else f"{v['mean']:.4f}"


def table(study: dict, width: int | None = None) -> str:
    """The study's table for the terminal: the findings' verdicts, then per query setting each
    entry's test accuracy and the main attacks' mean AUC, no wider than the terminal (columns
    that do not fit are left out and named); report.md has every column and interval."""
    import shutil

    width = width or shutil.get_terminal_size((120, 24)).columns
    entries, attacks = study["entries"], study["main_attacks"]
    out = []
    for f in study.get("findings") or []:
        if f["attack"] == ROC_ATTACK:
            out.append(f"finding {f['finding']}: {f['comparison']}: {fmt(f)} -> {f['verdict']}"[:width])
    if out:
        out.append("")
    for setting in list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]:
        here = [a for a in attacks if _split(a)[1] == setting]
        cols = [("test acc", lambda n: accuracy(study, n))]
        cols += [(f"{_split(a)[0]} AUC", lambda n, a=a: value(study, n, a, "auc")) for a in here]
        cols += [(f"{_split(a)[0]} TPR@1%", lambda n, a=a: value(study, n, a, "tpr@1%fpr"))
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
        out.append(f"queries: {setting}" + (" (means over seeds x targets)" if study.get("summary") else ""))
        out.append(f"{'entry':<{w0}}{'model':<{w1}}" + "".join(f"{h:>{w}}" for h, _, w in fits))
        for name in entries:
            vals = [get(name) for _, get, _ in fits]
            out.append(f"{name:<{w0}}{labels[name]:<{w1}}"
                       + "".join(f"{_num(v):>{w}}" for v, (_, _, w) in zip(vals, fits)))
        if len(fits) < len(cols):
            out.append(f"(not shown, too wide for {width} columns: {', '.join(h for h, _ in cols[len(fits):])}; "
                       "every column is in report.md)")
        out.append("")
    return "\n".join(out).rstrip()


def _split(attack: str) -> tuple[str, str]:
    base, _, setting = attack.partition("@")
    return base, setting or "plain"


def plot_leakage_vs_T(study: dict, path: Path) -> None:
    fig = leakage_figure(study)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))


def leakage_figure(study: dict):
    """One panel per (metric, query setting); one colour per attack; SNN entries as lines over T
    with 95% error bars (solid: trained from scratch, dashed: converted), ANN entries as a
    dotted line with a shaded band for their interval. Matplotlib's object API (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries, attacks = study["entries"], study["main_attacks"]
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    low = "tpr@0.1%fpr" if any(value(study, n, a, "tpr@0.1%fpr") for n in entries for a in attacks) else "tpr@1%fpr"
    metrics = (("auc", "AUC"), (low, {"tpr@0.1%fpr": "TPR@0.1%FPR", "tpr@1%fpr": "TPR@1%FPR"}[low]))
    fig = Figure(figsize=(5.2 * len(settings) + 2.5, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(settings), squeeze=False)
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
                color = f"C{bases.index(base) % 10}"
                groups: dict[str, list] = {}
                for name, e in entries.items():
                    v = value(study, name, a, metric)
                    if v is None:  # absent, or below this audit's resolution
                        continue
                    t = e["target"]
                    refs = _dp_text(e) + _refs_text(e)  # a DP target is a series of its own
                    if t.get("kind") == "ann":
                        ax.axhline(v["mean"], color=color, linestyle=":", linewidth=1.4, label=f"{base} ANN{refs}")
                        if ts and v.get("ci"):
                            ax.axhspan(*v["ci"], color=color, alpha=0.08)
                    elif t.get("T") is not None:
                        group = ("SNN converted" if e["converted"] else "SNN") + refs
                        groups.setdefault(group, []).append(bar_point(t["T"], v["mean"], v.get("ci")))
                for i, (g, pts) in enumerate(groups.items()):
                    pts.sort()
                    style = {"SNN": ("o", "-"), "SNN converted": ("s", "--")}.get(g, ("^", "-."))
                    dodged_errorbar(ax, pts, bases.index(base) * len(groups) + i, len(bases) * len(groups),
                                     marker=style[0], markersize=7 if len(pts) == 1 else 5, linestyle=style[1],
                                     color=color, label=f"{base} {g}")
            if ts:
                ax.set_xticks(ts)
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(title)
            ax.set_title(f"{title}, query {setting}", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)  # clear of the title
    fig.suptitle(f"Study {study['name']}: leakage against T\nmean and 95% interval (ANN dotted, its interval shaded)")
    return fig


def plot_leakage_vs_epsilon(study: dict, path: Path) -> None:
    fig = leakage_epsilon_figure(study)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))


def leakage_epsilon_figure(study: dict):
    """For a study with DP entries: AUC and TPR@0.1%FPR against the accountant's epsilon (log
    axis; entries trained without DP at the right, as "no DP"), one panel per (metric, query
    setting), a colour per attack, a line per model (kind, T, references; ANN dotted), each point
    the mean over seeds x targets with its 95% error bar. Matplotlib's object API (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries, attacks = study["entries"], study["main_attacks"]
    eps = [e["target"]["dp"]["epsilon"] for e in entries.values() if e["target"].get("dp")]
    inf_x = max(eps) * 4  # where "no DP" sits on the log axis
    settings = list(dict.fromkeys(_split(a)[1] for a in attacks)) or ["plain"]
    metrics = (("auc", "AUC"), ("tpr@0.1%fpr", "TPR@0.1%FPR"))
    fig = Figure(figsize=(5.2 * len(settings) + 2.5, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(settings), squeeze=False)
    bases = list(dict.fromkeys(_split(a)[0] for a in attacks))
    for row, (metric, title) in enumerate(metrics):
        for col, setting in enumerate(settings):
            ax = axes[row][col]
            for a in (a for a in attacks if _split(a)[1] == setting):
                base = _split(a)[0]
                lines: dict[str, list] = {}
                for name, e in entries.items():
                    v = value(study, name, a, metric)
                    if v is None:  # absent, or below this audit's resolution
                        continue
                    t, dp = e["target"], e["target"].get("dp")
                    model = (f"{t.get('kind', '?').upper()}{' converted' if e['converted'] else ''}"
                             + (f" T={t['T']}" if t.get("kind") == "snn" and t.get("T") is not None else "")
                             + _refs_text(e))
                    lines.setdefault(model, []).append(bar_point(dp["epsilon"] if dp else inf_x, v["mean"], v.get("ci")))
                for i, (model, pts) in enumerate(lines.items()):
                    pts.sort()
                    snn = "SNN" in model
                    dodged_errorbar(ax, pts, bases.index(base) * len(lines) + i, len(bases) * len(lines),
                                     marker="o" if snn else "s", linestyle="-" if snn else ":",
                                     color=f"C{bases.index(base) % 10}", label=f"{base} {model}")
            ax.set_xscale("log")
            ticks = sorted(set(eps))
            ax.set_xticks(ticks + [inf_x], [f"{v:.3g}" for v in ticks] + ["no DP"])
            ax.minorticks_off()
            ax.set_xlabel("epsilon (accountant, after training)")
            ax.set_ylabel(title)
            ax.set_title(f"{title}, query {setting}", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7)  # clear of the title
    fig.suptitle(f"Study {study['name']}: leakage against DP-SGD's epsilon\nmean and 95% interval")
    return fig


def plot_roc_overlay(study: dict, path: Path) -> None:
    fig = roc_overlay_figure(study)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))


def roc_overlay_figure(study: dict):
    """ROC_ATTACK's ROC of every entry on log-log axes, one line each (FPR and TPR of 0 drawn at
    half the smallest positive FPR, where a log axis can show them). Matplotlib's object API on
    the Agg canvas: no pyplot, so the caller's backend and figures are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
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
    return fig


def plot_epochs(study: dict, path: Path) -> None:
    fig = epochs_figure(study)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))


def epochs_figure(study: dict):
    """The main target's attack AUC at every audited epoch (the MembershipAttack history), one
    line per entry, the mean over seeds with a band for their 95% interval: how leakage builds
    up during training."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from attacks import mean_interval

    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (name, e) in enumerate(study["entries"].items()):
        runs = [r for r in (e.get("seeds") or {}).values() if r and r.get("history")] or [e]
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for h in run.get("history") or []:
                if ROC_ATTACK in h.get("attacks", {}):
                    by_epoch.setdefault(h["epoch"], []).append(h["attacks"][ROC_ATTACK]["auc"])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        means = [sum(by_epoch[x]) / len(by_epoch[x]) for x in epochs]
        color, style = f"C{i % 10}", ("-", "--", "-.", ":")[(i // 10) % 4]
        ax.plot([x + 1 for x in epochs], means, marker="o", markersize=3, color=color, ls=style,
                label=f"{name} ({_label(e)})")
        if all(len(by_epoch[x]) >= 2 for x in epochs):
            bands = [mean_interval(by_epoch[x], 0.95) for x in epochs]
            ax.fill_between([x + 1 for x in epochs], [b[0] for b in bands], [b[1] for b in bands], color=color,
                            alpha=0.12)
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch (1 = the first)")
    ax.set_ylabel(f"{ROC_ATTACK} AUC")
    seeds = study.get("seeds") or []
    fig.suptitle(f"{ROC_ATTACK} AUC of the main target during training"
                 + (f": mean over {len(seeds)} seeds, 95% band" if len(seeds) >= 2 else ""), fontsize=11)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def write_study_report(spec: dict, plans: dict, reports: dict[tuple, dict], facts: dict[tuple, dict],
                       seed_dir) -> dict:
    """Assemble and write the study report from each (entry, seed)'s audit report and done.json
    facts; `seed_dir(spec, seed)` is where a seed's runs are."""
    out = study_dir(spec["run_dir"])
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
                                               ("target", "attacks", "targets", "across_targets", "history",
                                                "canary_audit", "attack_costs", "attack_details")}
                                   for seed in seeds},
                         "canary_audit": r.get("canary_audit")}
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
    study["compare"] = spec.get("compare") or []
    study["attack_comparisons"] = comparisons_summary(study, study["compare"])
    study["access"] = access_summary(study)
    study["dp_audit"] = dp_audit_rows(study)
    atomic_write(out / "report.json", lambda p: p.write_text(json.dumps(study, indent=1) + "\n"))
    atomic_write(out / "report.md", lambda p: p.write_text(markdown(study)))
    plot_leakage_vs_T(study, out / "leakage_vs_T.png")
    if any(e["target"].get("dp") for e in study["entries"].values()):
        plot_leakage_vs_epsilon(study, out / "leakage_vs_epsilon.png")
    plot_roc_overlay(study, out / "roc_overlay.png")
    plot_epochs(study, out / "auc_per_epoch.png")
    if study["access"]:
        plot_access(study, out / "leakage_by_access.png")
    return study


