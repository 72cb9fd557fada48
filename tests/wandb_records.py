"""Read the records of an offline W&B run (run-<id>.wandb) without a network or an account:
the file is a LevelDB-style log of protobuf `Record`s (a 7-byte ":W&B" header, then 32 KiB
blocks of records, each with a CRC32, a length and a FULL / FIRST / MIDDLE / LAST type).

    python tests/wandb_records.py runs/default/model_0/wandb/offline-run-*/run-*.wandb
    python tests/wandb_records.py --render runs/default/model_0/wandb/offline-run-*/run-*.wandb out.png

prints the run's id, config keys, metric definitions and history keys, or draws what its
dashboard shows. tests/test_wandb.py uses `read_run` to check which metrics landed in
which run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

BLOCK = 32768
HEADER = 7  # ":W&B", magic 0xBEE1, version


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            pending = chunk
        elif kind == 2:  # FIRST
            pending = chunk
            continue
        elif kind == 3:  # MIDDLE
            pending += chunk
            continue
        else:  # LAST
            pending += chunk
        rec = pb.Record()
        rec.ParseFromString(pending)
        pending = b""
        yield rec


def settle() -> None:
    """Wait until W&B has written every run of this process to disk.

    `run.finish()` returns once the service process (wandb-core) has acknowledged the run's
    exit, but it only *informs* the service that the run is over. The service keeps the run
    file's last block (32 KiB) in memory and writes it when it closes the run, a moment later.
    A run file under 32 KiB read right after finish() can be its 7-byte header alone, with no
    record in it; tests/test_wandb.py shows it by pausing the service. `wandb.teardown()` waits
    until the service has closed every run and stopped (the next run starts a new one)."""
    import wandb

    wandb.teardown()


def read_run(path: str | Path) -> dict:
    """{id, tags, config: {key: value}, metrics: {glob or name: step_metric}, history: [{key: value}],
    summary: {key: value}} of one offline run file. Runs of this process are settled first, and
    the file must hold its exit record."""
    settle()
    out = {"id": None, "tags": [], "config": {}, "metrics": {}, "history": [], "summary": {}}
    exited = False
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        exited = exited or kind == "exit"
        if kind == "run":
            out["id"] = rec.run.run_id
            out["tags"] = list(rec.run.tags)
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "metric":
            name = rec.metric.glob_name or rec.metric.name
            out["metrics"][name] = rec.metric.step_metric
        elif kind == "history":
            out["history"].append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                                   for item in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    if not exited:
        raise ValueError(f"the run did not finish writing: {describe(path)}")
    return out


def describe(path: str | Path) -> str:
    """One line about a run file for a failing assertion: its size and how many records of
    each kind it holds (no `exit` record: W&B had not finished writing it)."""
    from collections import Counter

    kinds = Counter(rec.WhichOneof("record_type") for rec in records(path))
    return f"{path}: {Path(path).stat().st_size} bytes, records {dict(kinds)}"


def render(run_file: str | Path, out: str | Path, attacks=("rmia_offline", "lira_online", "attack_p")) -> Path:
    """A PNG of what the target's W&B dashboard shows, drawn from its offline run: attack AUC
    and TPR at 1% FPR against the epoch, train / test accuracy and their gap, and the final
    ROC from the run's audit/roc_table. For docs/wandb.md (no W&B account or network here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run = read_run(run_file)
    rows = [r for r in run["history"] if any(k.startswith("attack/") for k in r)]
    epochs = [r["epoch"] + 1 for r in rows]
    fig = Figure(figsize=(14, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_auc, ax_tpr, ax_acc, ax_roc = fig.subplots(1, 4)
    for a in attacks:
        ax_auc.plot(epochs, [r.get(f"attack/{a}/auc") for r in rows], marker=".", label=a)
        ax_tpr.plot(epochs, [r.get(f"attack/{a}/tpr@1%fpr") for r in rows], marker=".", label=a)
    for key, label in (("audit/train_acc", "train (members)"), ("audit/test_acc", "test (population)"),
                       ("audit/acc_gap", "gap")):
        ax_acc.plot(epochs, [r.get(key) for r in rows], marker=".", label=label)
    table = next(Path(run_file).parent.glob("files/media/table/audit/roc_table_*.table.json"), None)
    if table is not None:
        data = json.loads(table.read_text())
        for a in attacks:
            pts = [(f, t) for name, f, t in data["data"] if name == a]
            ax_roc.plot([p[0] for p in pts], [p[1] for p in pts], label=a)
        ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    for ax, title in ((ax_auc, "attack/<name>/auc"), (ax_tpr, "attack/<name>/tpr@1%fpr"),
                      (ax_acc, "audit/train_acc, test_acc, acc_gap"), (ax_roc, "audit/roc (final)")):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if ax is not ax_roc:
            ax.set_xlabel("epoch")
    ax_roc.set(xlabel="FPR", ylabel="TPR")
    fig.suptitle(f"W&B run {run['id']} ({', '.join(run['tags'])}), drawn from its offline files")
    fig.savefig(out, dpi=110)
    return Path(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # python tests/wandb_records.py --render RUN_FILE OUT.png
        print(render(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    for arg in sys.argv[1:]:
        run = read_run(arg)
        keys = sorted({k for h in run["history"] for k in h})
        print(f"{arg}\n  id {run['id']}, tags {run['tags']}\n  config {sorted(run['config'])}\n"
              f"  metrics {run['metrics']}\n  history rows {len(run['history'])}, keys {keys}\n"
              f"  summary {sorted(run['summary'])[:12]}")
