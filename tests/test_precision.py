"""bf16 mixed precision: training and the audit run, signals stay float32, the signal cache
key and the report record the precision."""

import json

import torch

import run
from attacks import query_signals
from lightning_modules import Classifier

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_bf16_mixed_fit_and_audit_keep_float32_signals_and_record_the_precision(tmp_path):
    rd = tmp_path / "run"
    small = ["--data.num_references", "2", "--trainer.max_epochs", "1", "--model.width", "0.5"]
    assert run.main(["fit", "--run_dir", str(rd), *QUIET, *small, "--trainer.precision", "bf16-mixed"]) == 0
    report = json.loads((rd / "audit" / "report.json").read_text())
    assert report["target"]["precision"] == "bf16-mixed"
    assert "precision: bf16-mixed" in (rd / "audit" / "report.md").read_text()
    for k in range(3):
        assert json.loads((rd / f"model_{k}" / "done.json").read_text())["precision"] == "bf16-mixed"
        (meta,) = sorted((rd / f"model_{k}" / "signals").glob("*.json"))
        assert json.loads(meta.read_text())["precision"] == "bf16-mixed"
        tensors = torch.load(meta.with_suffix(".pt"), weights_only=True)
        assert tensors["audit/rescaled_logit"].dtype == torch.float32
        assert tensors["population/rescaled_logit"].dtype == torch.float32

    # The offline audit reads every model's signals from that cache (no query) and states the precision.
    out = tmp_path / "offline"
    assert run.main(["audit", "--run_dir", str(rd), *QUIET, *small[:2], "--report_dir", str(out)]) == 0
    offline = json.loads((out / "report.json").read_text())
    assert offline["target"]["precision"] == "bf16-mixed"
    assert offline["settings"]["signal_cache"] == {"hits": 3}
    assert offline["attacks"]["rmia_offline"]["auc"] == report["attacks"]["rmia_offline"]["auc"]

    # The same checkpoints recorded under another precision: the cache key differs, so it is recomputed.
    done = rd / "model_1" / "done.json"
    record = json.loads(done.read_text())
    done.write_text(json.dumps({**record, "precision": "32-true"}))
    again = tmp_path / "again"
    assert run.main(["audit", "--run_dir", str(rd), *QUIET, *small[:2], "--report_dir", str(again)]) == 0
    assert json.loads((again / "report.json").read_text())["settings"]["signal_cache"] == {"hits": 2, "misses": 1}


def test_signals_are_float32_inside_an_autocast_region():
    """The training callback queries the live model; under bf16-mixed any query made inside
    Lightning's autocast region must still run, and be kept, in float32."""
    torch.manual_seed(0)
    model = Classifier(kind="ann", arch="cnn", width=0.5)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    loader = [(x, y, torch.arange(32))]
    plain = query_signals(model, loader, "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = query_signals(model, loader, "plain")
    assert inside["rescaled_logit"].dtype == plain["rescaled_logit"].dtype
    assert torch.equal(inside["rescaled_logit"], plain["rescaled_logit"])
