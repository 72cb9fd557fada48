"""Read the records of an offline W&B run (run-<id>.wandb) without a network or an account:
the file is a LevelDB-style log of protobuf `Record`s (a 7-byte ":W&B" header, then 32 KiB
blocks of records, each with a CRC32, a length and a FULL / FIRST / MIDDLE / LAST type).

    python tests/wandb_records.py runs/default/model_0/wandb/offline-run-*/run-*.wandb

prints the run's id, config keys, metric definitions and history keys. tests/test_wandb.py
uses `read_run` to check which metrics landed in which run."""

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


def read_run(path: str | Path) -> dict:
    """{id, tags, config: {key: value}, metrics: {glob or name: step_metric}, history: [{key: value}],
    summary: {key: value}} of one offline run file."""
    out = {"id": None, "tags": [], "config": {}, "metrics": {}, "history": [], "summary": {}}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
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
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run = read_run(arg)
        keys = sorted({k for h in run["history"] for k in h})
        print(f"{arg}\n  id {run['id']}, tags {run['tags']}\n  config {sorted(run['config'])}\n"
              f"  metrics {run['metrics']}\n  history rows {len(run['history'])}, keys {keys}\n"
              f"  summary {sorted(run['summary'])[:12]}")
