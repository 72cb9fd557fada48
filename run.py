"""Train and audit ANN / SNN targets for membership inference.

    python run.py fit                                   # the whole audit on the embedded default
    python run.py fit --data.model_index 2              # train only model 2 (a reference; 0 is the target)
    python run.py audit --queries '[plain, "dropout:p=0.01,n=10"]' --latencies '[1, 2, 4]'
    python run.py fit --config configs/fashion_mnist.yaml
    python run.py test --run_dir runs/default           # population accuracy of the target's last checkpoint
    python run.py fit --print_config                    # the resolved configuration
    python run.py submit --config CFG --partition gpu --time 12:00:00 --submit   # SLURM: reference array, then the target
    python run.py study --config configs/study/digits.yaml   # a matrix of models on one plan, one report

Every run reads configs/default.yaml first, then any --config files, then flags.
`fit` with data.model_index null trains every missing reference model, then the
target with the MembershipAttack callback, and writes run_dir/audit/. A rerun skips
finished models and resumes interrupted ones from their last checkpoint.

This script only routes: the command line is training/cli.py, the study runner
study/runner.py, the SLURM scripts cluster/slurm.py.
"""

from __future__ import annotations

import os
import sys


SUBCOMMANDS = {
    "fit": "train the missing references, then the target, audited every epoch; writes run_dir/audit/",
    "validate": "accuracy of a model's last checkpoint on its own non-members",
    "test": "accuracy of a model's last checkpoint on the population (never trained on)",
    "audit": "attack finished checkpoints over a grid of query strategies and SNN latencies",
    "study": "train and audit a matrix of runs on one membership plan; one combined report",
    "submit": "SLURM scripts for the same config: a reference array, the target, an audit (--submit queues them)",
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    return "\n".join(["usage: run.py <subcommand> [flags]      (run.py <subcommand> --help lists its flags)", "",
                      *[f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()], "",
                      "Every run reads configs/default.yaml, then each --config, then flags (docs/configuration.md)."])


def main(args: list[str] | None = None) -> int:
    from core.errors import ToolError, first_line

    try:
        return _route(args)
    except ToolError as err:  # every subcommand's errors end the same way: one line, the error's exit status
        print(f"error: {first_line(err, 1000)}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # a DDP rank whose peer died (kill -9, OOM, a lost node): one line, exit 1
        from core.errors import lost_peer

        line = lost_peer(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 1


def _route(args: list[str] | None) -> int:
    argv = sys.argv[1:] if args is None else list(args)
    if not sys.stderr.isatty():  # in a log file, no progress bars (tqdm reads this when it is imported)
        os.environ.setdefault("TQDM_DISABLE", "1")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        print(f"error: run.py {argv[0]!r} is not a subcommand; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    if argv[:1] == ["submit"]:  # SLURM scripts for the same config (docs/cluster.md)
        from cluster.slurm import submit_main

        return submit_main(argv[1:])
    if argv[:1] == ["study"]:  # fit + audit a matrix of runs on one plan, one report
        from study.runner import study_main

        return study_main(argv[1:])
    from lightning_modules.networks import keep_large_tensors_in_heap
    from training.cli import run_cli

    keep_large_tensors_in_heap()  # CPU: reuse freed 32 MiB+ activations (lightning_modules/networks.py)
    return run_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
