"""benchmarks/gpu.py: the CPU smoke run writes every figure; a failing phase keeps the others'."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402

MODEL_FIELDS = ("train_images_per_s", "train_step_ms", "train_peak_mib", "audit_images_per_s", "audit_peak_mib",
                "batch", "timed_steps", "warmup_steps", "audit_samples")
ENV_FIELDS = ("date", "gpu", "torch", "cuda", "spikingjelly", "lightning", "sj_lif_cuda_implementation")


@pytest.mark.slow
def test_smoke_run_writes_every_field(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-smoke-fit-report.json", "gpu-smoke-fit.log",
                                                          "gpu-smoke.json", "gpu-smoke.md"]
    res = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert all(k in res["environment"] for k in ENV_FIELDS)
    for kind in ("ann", "snn"):
        assert all(k in res[kind] for k in MODEL_FIELDS), res[kind]
        assert res[kind]["train_images_per_s"] > 0 and res[kind]["audit_images_per_s"] > 0
        assert res[kind]["audit_samples"] == res["sizes"]["audit_batch"] * res["sizes"]["audit_steps"]
    assert res["snn"]["T"] == 4 and res["snn"]["lif_backend"]["selected"]
    assert res["snn_ann_train_step_ratio"] > 0
    fit = res["fit"]
    assert fit["exit_code"] == 0 and fit["report_complete"] and fit["report_missing"] == []
    assert fit["wall_s"] > 0 and fit["epochs"] == 1
    assert set(fit["attacks"]) == set(gpu.REPORT_ATTACKS)
    assert "SNN T=4" in (tmp_path / "gpu-smoke.md").read_text()


def test_a_failing_phase_is_recorded_and_the_others_are_saved(tmp_path, monkeypatch):
    real = gpu.measure_model

    def measure(kind, sizes, device):
        if kind == "ann":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(kind, sizes, device)

    monkeypatch.setattr(gpu, "measure_model", measure)
    assert gpu.main(["--smoke", "--skip-fit", "--out", str(tmp_path)]) == 1
    res = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert res["ann"] == {"error": "RuntimeError: CUDA out of memory (simulated)"}
    assert res["snn"]["train_images_per_s"] > 0
    assert "snn_ann_train_step_ratio" not in res
    assert "ann: RuntimeError: CUDA out of memory (simulated)" in (tmp_path / "gpu-smoke.md").read_text()


def test_report_check_names_what_is_missing():
    attacks = {n: {k: 0.5 for k in gpu.ATTACK_FIELDS} for n in gpu.REPORT_ATTACKS}
    history = [{"epoch": 0, "train_acc": 1.0, "test_acc": 0.9, "acc_gap": 0.1, "attacks": {}}]
    target = {"train_acc": 1.0, "test_acc": 0.9, "acc_gap": 0.1, "precision": "32-true"}
    report = {"attacks": attacks, "history": history, "target": target}
    assert gpu.check_report(report, 1) == []
    del attacks["lira_online"]["tpr@0%fpr"]
    del target["precision"]
    assert gpu.check_report(report, 2) == ["attacks.lira_online.tpr@0%fpr", "history (1 entries, expected 2)",
                                           "target.precision"]
