"""One GPU, a few minutes: ResNet-18 as an ANN and as an SNN (T = 4) in bf16 mixed precision,
then the default digits `run.py fit` on the GPU, with every figure written as it is measured.

    python benchmarks/gpu.py                       # on a CUDA machine, about 3-6 minutes; needs no network
    python benchmarks/gpu.py --out /tmp/figures    # where gpu.json, gpu.md, gpu-fit.log, gpu-fit-report.json go
    python benchmarks/gpu.py --smoke               # the same phases on the CPU at tiny sizes (under a minute)

Phases, each guarded (a failing phase is recorded with its error; the others still run and
are saved):
1. `ann`, `snn`: the project's own Classifier (model.arch resnet18, kind ann / snn, T = 4, LIF,
   direct encoding) on synthetic CIFAR-10-shaped data made here (3x32x32, 10 classes, no
   download). Train: forward + loss under torch.autocast(bfloat16), backward, SGD step;
   images/s over timed steps after warm-up steps, torch.cuda.synchronize() around the timing.
   Audit: the tool's own signal pass (attacks.query_signals, plain query), which runs in
   float32 whatever the training precision; images/s likewise. Peak GPU memory
   (torch.cuda.max_memory_allocated) of each, and the SNN/ANN train-step ratio.
   spikingjelly 2.0 picks its LIF kernel on CUDA by itself (native CUDA, Triton, then torch;
   SJ_LIF_CUDA_IMPLEMENTATION=triton|torch|cuda forces one): the one that ran is reported.
2. `fit`: `python run.py fit` on the default digits config with --trainer.accelerator gpu
   --trainer.devices 1 in a temporary run directory; its wall time, and a check that
   report.json has every field the design requires (every attack with auc, tpr@1%fpr,
   tpr@0.1%fpr, tpr@0%fpr; one history entry per epoch with accuracies; the target's accuracies).

Output (--out, default benchmarks/results/): gpu.json (every figure, the date, the GPU's name,
torch / CUDA / spikingjelly versions), gpu.md (the same as tables), gpu-fit.log (the fit's
output) and gpu-fit-report.json (its report). --smoke writes gpu-smoke.* instead.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

START = time.perf_counter()

# Sizes. Full: batch 256, timed steps after warm-up (the SNN's first steps include kernel selection
# and, with Triton, compilation). Smoke: the same code path at toy sizes, on the CPU.
SIZES = {
    "full": dict(batch=256, width=1.0, warmup=10, steps=50, audit_batch=512, audit_warmup=2, audit_steps=20,
                 fit_args=[], fit_timeout=360),
    "smoke": dict(batch=4, width=0.125, warmup=1, steps=2, audit_batch=8, audit_warmup=1, audit_steps=2,
                  fit_args=["--trainer.max_epochs", "1", "--data.num_references", "2", "--model.width", "0.25"],
                  fit_timeout=240),
}
T = 4
DISTINCT_BATCHES = 8
ATTACK_FIELDS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr", "tpr@0%fpr")
TARGET_FIELDS = ("train_acc", "test_acc", "acc_gap")
# The attacks the design names, which the default config's report must hold.
REPORT_ATTACKS = ("attack_p", "attack_r", "rmia_offline", "rmia_online", "lira_online", "lira_offline", "reference_ratio")


def say(msg: str) -> None:
    print(f"[gpu.py {time.perf_counter() - START:7.1f}s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def environment(device: torch.device, smoke: bool) -> dict:
    import lightning

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "mode": "smoke" if smoke else "full", "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "lightning": lightning.__version__, "spikingjelly": importlib.metadata.version("spikingjelly"),
           "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
           "sj_lif_cuda_implementation": os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto")}
    if device.type == "cuda":
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken: spikingjelly then cannot use it either
        env["triton"] = None
    return env


class BackendProbe:
    """Which LIF kernel spikingjelly ran: its selection record, and its own log line
    ("ops selection operator=sj_lif ... implementation=..."), which it only emits on CUDA."""

    def __init__(self):
        self.lines: list[str] = []
        try:
            from spikingjelly.logger import logger

            logger.enable("spikingjelly")
            self._sink = logger.add(lambda m: self.lines.append(str(m).strip()), level="INFO",
                                    filter=lambda r: r["message"].startswith(("ops selection", "ops binding")))
        except Exception:  # noqa: BLE001 - the probe must never stop the benchmark
            self._sink = None

    def result(self, device: torch.device) -> dict:
        out = {"requested": os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "auto"), "log": self.lines[-5:]}
        if device.type != "cuda":
            out["selected"] = "cpu (no CUDA kernel selection on the CPU)"
            return out
        try:
            from spikingjelly._ops import lif

            chosen = [*lif._selection._selections.values(), *lif._selection._compiled_selections.values()]
            names = sorted({c.name for c in chosen if c is not None})
            unavailable = {k: v for c in chosen if c is not None for k, v in c.unavailable.items()}
            out["selected"] = ", ".join(names) if names else "torch-reference (fallback)" if chosen else "none recorded"
            out["unavailable"] = {k: v[:200] for k, v in unavailable.items()}
        except Exception as err:  # noqa: BLE001
            out["selected"] = f"unknown ({type(err).__name__}: {err})"
        return out


def synthetic_batches(n_batches: int, batch: int, device: torch.device, seed: int):
    """CIFAR-10-shaped data made here: [B, 3, 32, 32] in [0, 1), labels 0..9, on the device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    xs = torch.rand(n_batches, batch, 3, 32, 32, generator=g)
    ys = torch.randint(0, 10, (n_batches, batch), generator=g)
    return xs.to(device), ys.to(device)


def build(kind: str, width: float, device: torch.device):
    from lightning_modules import Classifier

    torch.manual_seed(0)
    model = Classifier(kind=kind, arch="resnet18", T=T, width=width, num_classes=10, input_shape=(3, 32, 32),
                       normalization=([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]))
    return model.to(device)


def measure_model(kind: str, sizes: dict, device: torch.device) -> dict:
    """Train and audit images/s and peak memory of ResNet-18 as `kind`, bf16 mixed precision."""
    from attacks import query_signals

    model = build(kind, sizes["width"], device)
    params = sum(p.numel() for p in model.parameters())
    batch, warmup, steps = sizes["batch"], sizes["warmup"], sizes["steps"]
    # A few distinct batches, cycled: the peak memory below includes them (8 x 256 images: 25 MB).
    xs, ys = synthetic_batches(min(DISTINCT_BATCHES, warmup + steps), batch, device, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    reset_peak(device)
    model.train()

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(xs[i % len(xs)]), ys[i % len(xs)])
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    train_s = time.perf_counter() - t0
    out = {"kind": kind, "arch": "resnet18", "T": T if kind == "snn" else None, "width": sizes["width"],
           "parameters": params, "precision": "bf16-mixed (train); float32 (audit signals)", "batch": batch,
           "warmup_steps": warmup, "timed_steps": steps, "train_step_ms": round(1000 * train_s / steps, 3),
           "train_images_per_s": round(batch * steps / train_s, 1), "train_peak_mib": peak_mib(device)}
    del xs, ys, opt
    say(f"{kind}: train {out['train_images_per_s']:.1f} images/s ({out['train_step_ms']:.1f} ms/step), "
        f"peak {out['train_peak_mib']} MiB")

    # The audit: the tool's own signal pass over batches (x, y, index), float32.
    ab, aw, asteps = sizes["audit_batch"], sizes["audit_warmup"], sizes["audit_steps"]
    axs, ays = synthetic_batches(min(DISTINCT_BATCHES, asteps), ab, device, seed=2)
    n = len(axs)
    loader = [(axs[i % n], ays[i % n], torch.arange(ab, device=device) + i * ab) for i in range(asteps)]
    reset_peak(device)
    query_signals(model, [(axs[i % n], ays[i % n], torch.arange(ab, device=device)) for i in range(aw)], "plain")
    sync(device)
    t0 = time.perf_counter()
    signals = query_signals(model, loader, "plain")
    sync(device)
    audit_s = time.perf_counter() - t0
    out.update({"audit_batch": ab, "audit_timed_batches": asteps,
                "audit_images_per_s": round(ab * asteps / audit_s, 1), "audit_peak_mib": peak_mib(device),
                "audit_samples": int(signals["correct"].shape[1])})
    say(f"{kind}: audit {out['audit_images_per_s']:.1f} images/s, peak {out['audit_peak_mib']} MiB")
    return out


def check_report(report: dict, epochs: int) -> list[str]:
    """What report.json lacks of the design's fields (empty: complete)."""
    missing = []
    attacks = report.get("attacks") or {}
    for name in REPORT_ATTACKS:
        if name not in attacks:
            missing.append(f"attacks.{name}")
            continue
        missing += [f"attacks.{name}.{k}" for k in ATTACK_FIELDS if k not in attacks[name]]
    history = report.get("history") or []
    if len(history) != epochs:
        missing.append(f"history ({len(history)} entries, expected {epochs})")
    for h in history:
        missing += [f"history[{h.get('epoch')}].{k}" for k in (*TARGET_FIELDS, "attacks") if k not in h]
    target = report.get("target") or {}
    missing += [f"target.{k}" for k in (*TARGET_FIELDS, "precision") if k not in target]
    return missing


def run_fit(sizes: dict, device: torch.device, out: Path, prefix: str) -> dict:
    """The default digits `run.py fit` on `device`, in a temporary run directory."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-bench-run-"))
    cmd = [sys.executable, str(ROOT / "run.py"), "fit", "--run_dir", str(run_dir / "run"),
           "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
           *sizes["fit_args"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    say("fit: " + " ".join(cmd[1:]))
    log_path = out / f"{prefix}-fit.log"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(sizes["fit_timeout"], proc.kill)
    timer.start()
    try:
        with open(log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                print(f"    fit| {line}", end="", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    result = {"command": " ".join(["python", "run.py", *cmd[2:]]), "accelerator": accelerator, "exit_code": rc,
              "wall_s": round(wall, 1), "timed_out": rc != 0 and wall >= sizes["fit_timeout"]}
    report_path = run_dir / "run" / "audit" / "report.json"
    if rc != 0 or not report_path.is_file():
        result["error"] = f"run.py fit exited {rc}" + (" (killed at the time limit)" if result["timed_out"] else "") \
                          + ("" if report_path.is_file() else "; no report.json")
        return result
    report = json.loads(report_path.read_text())
    (out / f"{prefix}-fit-report.json").write_text(json.dumps(report, indent=1))
    done = json.loads((run_dir / "run" / "model_0" / "done.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    epochs = done.get("epochs")
    missing = check_report(report, epochs)
    result.update({"epochs": epochs, "report_missing": missing, "report_complete": not missing,
                   "target": {k: report["target"].get(k) for k in ("kind", "arch", "T", "precision", *TARGET_FIELDS)},
                   "attacks": {n: {k: m.get(k) for k in ATTACK_FIELDS} for n, m in report["attacks"].items()}})
    say(f"fit: {wall:.1f} s, report {'complete' if not missing else 'MISSING ' + ', '.join(missing)}")
    return result


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"# GPU benchmark ({env['mode']})", "",
             f"{env['date']}, {env['gpu'] or 'no GPU (' + env['device'] + ')'}, torch {env['torch']}, CUDA "
             f"{env['cuda']}, cuDNN {env['cudnn']}, lightning {env['lightning']}, spikingjelly {env['spikingjelly']}, "
             f"triton {env['triton']}, Python {env['python']}.", ""]
    models = [res.get(k) for k in ("ann", "snn")]
    if any(m and "train_images_per_s" in m for m in models):
        lines += ["ResNet-18 on synthetic 3x32x32 data, 10 classes; training in bf16 mixed precision, the audit "
                  "signal pass in float32.", "",
                  "| model | batch | train images/s | train ms/step | train peak MiB | audit images/s | audit peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for m in models:
            if m and "train_images_per_s" in m:
                name = "SNN T=4" if m["kind"] == "snn" else "ANN"
                lines.append(f"| {name} | {m['batch']} | {fmt(m['train_images_per_s'])} | {fmt(m['train_step_ms'])} | "
                             f"{fmt(m['train_peak_mib'])} | {fmt(m['audit_images_per_s'])} | {fmt(m['audit_peak_mib'])} |")
        lines.append("")
    if res.get("snn_ann_train_step_ratio") is not None:
        lines += [f"SNN / ANN train-step time: {res['snn_ann_train_step_ratio']:.2f}x; audit: "
                  f"{fmt(res.get('snn_ann_audit_ratio'))}x.", ""]
    if res.get("snn", {}).get("lif_backend"):
        lines += [f"spikingjelly LIF kernel: {res['snn']['lif_backend'].get('selected')} "
                  f"(SJ_LIF_CUDA_IMPLEMENTATION={res['snn']['lif_backend'].get('requested')}).", ""]
    fit = res.get("fit")
    if fit:
        lines += [f"`{fit['command']}`: exit {fit['exit_code']}, {fit['wall_s']} s wall"
                  + (f", report complete: {fit['report_complete']}" if "report_complete" in fit else "") + ".", ""]
        if fit.get("attacks"):
            lines += ["| attack | " + " | ".join(ATTACK_FIELDS) + " |", "|---" * (len(ATTACK_FIELDS) + 1) + "|"]
            lines += [f"| {n} | " + " | ".join(fmt(m.get(k)) for k in ATTACK_FIELDS) + " |"
                      for n, m in fit["attacks"].items()]
            t = fit["target"]
            lines += ["", f"Target accuracy: train {fmt(t.get('train_acc'))}, test {fmt(t.get('test_acc'))}.", ""]
    errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["Errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), ""]
    return "\n".join(lines)


def save(res: dict, out: Path, prefix: str) -> None:
    res["elapsed_s"] = round(time.perf_counter() - START, 1)
    (out / f"{prefix}.json").write_text(json.dumps(res, indent=1))
    (out / f"{prefix}.md").write_text(markdown(res))


def guarded(name: str, res: dict, out: Path, prefix: str, fn, device: torch.device) -> None:
    """Run one phase; an error is recorded under its name, printed, and the next phase runs."""
    say(f"phase {name}")
    try:
        res[name] = fn()
    except BaseException as err:  # noqa: BLE001 - one phase must not lose the others' figures
        if isinstance(err, KeyboardInterrupt):
            raise
        traceback.print_exc()
        res[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]}
        say(f"phase {name} FAILED: {res[name]['error']}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    save(res, out, prefix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the figures")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks every phase runs")
    ap.add_argument("--batch", type=int, help="training batch size (default 256; smoke 4)")
    ap.add_argument("--skip-fit", action="store_true", help="only the ResNet-18 measurements")
    args = ap.parse_args(argv)
    sizes = dict(SIZES["smoke" if args.smoke else "full"])
    if args.batch:
        sizes["batch"] = args.batch
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        torch.backends.cudnn.benchmark = True
    else:
        print("error: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = "gpu-smoke" if args.smoke else "gpu"
    probe = BackendProbe()
    res: dict = {"environment": environment(device, args.smoke), "sizes": {k: v for k, v in sizes.items()}}
    say(f"{res['environment']['gpu'] or device}, torch {torch.__version__}, CUDA {torch.version.cuda}; writing {out}/{prefix}.*")
    save(res, out, prefix)

    guarded("ann", res, out, prefix, lambda: measure_model("ann", sizes, device), device)

    def snn():
        m = measure_model("snn", sizes, device)
        m["lif_backend"] = probe.result(device)
        say(f"snn: LIF kernel {m['lif_backend']['selected']}")
        return m

    guarded("snn", res, out, prefix, snn, device)
    if "error" in res["snn"] and device.type == "cuda":
        # spikingjelly's own choice failed (a Triton kernel without bf16, say): measure its torch
        # kernels instead, so that the run still gives an SNN figure, and keep the error.
        def snn_torch():
            from spikingjelly._ops import lif

            lif._selection._requested = "torch"  # what SJ_LIF_CUDA_IMPLEMENTATION=torch sets at import
            lif._selection._selections.clear()
            return snn()

        guarded("snn_torch_kernel", res, out, prefix, snn_torch, device)
        if "error" not in res["snn_torch_kernel"]:
            res["snn"], res["snn_auto_kernel_error"] = res.pop("snn_torch_kernel"), res["snn"]["error"]
    ann, snn_res = res.get("ann", {}), res.get("snn", {})
    if "train_step_ms" in ann and "train_step_ms" in snn_res:
        res["snn_ann_train_step_ratio"] = round(snn_res["train_step_ms"] / ann["train_step_ms"], 3)
        res["snn_ann_audit_ratio"] = round(ann["audit_images_per_s"] / snn_res["audit_images_per_s"], 3)
        say(f"SNN/ANN train-step ratio {res['snn_ann_train_step_ratio']:.2f}, audit {res['snn_ann_audit_ratio']:.2f}")
    if not args.skip_fit:
        guarded("fit", res, out, prefix, lambda: run_fit(sizes, device, out, prefix), device)
    save(res, out, prefix)
    say(f"done; {out / (prefix + '.json')}")
    failed = [k for k in ("ann", "snn", "fit") if isinstance(res.get(k), dict) and "error" in res[k]]
    if res.get("fit", {}).get("report_missing"):
        failed.append("fit report")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
