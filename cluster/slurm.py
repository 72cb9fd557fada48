"""SLURM batch scripts for a membership-inference study, generated from run.py's own config.

    python run.py submit --config configs/paper/cifar10_resnet18.yaml --data.num_references 64 \\
        --partition gpu --time 12:00:00 --gpus_per_node 1 --array_parallelism 16     # print the scripts
    python run.py submit ... --submit                      # write them to run_dir/slurm/ and sbatch them
    python -m cluster.slurm ...                            # the same, without going through run.py

Up to three jobs, each a plain `srun python run.py ...` of a command that also runs on a laptop:

    references.sbatch  job array 1..K: task k trains model k (`fit --data.model_index k`)
    target.sbatch      afterok on the array: the target with the MembershipAttack callback (model_index 0)
    audit.sbatch       (--audit) afterok on the target: `run.py audit` with other queries / latencies

Every model trains in its own run_dir/model_<k>/, so a task that Lightning requeues on SIGUSR1
resumes from its own checkpoint, and a resubmitted study skips the models already finished.
SLURM options come from --slurm_config YAML, then flags; nothing cluster-specific is built in.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError
from core.rundir import MAX_REFERENCES, finished_models, slurm_dir

ROOT = Path(__file__).resolve().parents[1]

# run.py flags that may be passed through; the rest is set per job from the SLURM options.
PASS_KEYS = ("config", "run_dir", "seed_everything", "references")
PASS_PREFIXES = ("data.", "model.", "trainer.")
SET_PER_JOB = {
    "data.model_index": "it is set per job (the array task id for references, 0 for the target)",
    "trainer.devices": "use --gpus_per_node (it also sets --ntasks-per-node)",
    "trainer.num_nodes": "use --nodes",
    "trainer.accelerator": "use --gpus_per_node (0: cpu, otherwise gpu)",
    "trainer.default_root_dir": "each model must keep its own run_dir/model_<k>/ for requeue checkpoints",
}


class SlurmError(ConfigError):
    """A bad option: the message names it and says what is allowed."""


@dataclass
class SlurmOptions:
    """What the scripts ask SLURM for. Every field is also a flag (--name) and a YAML key."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None          # per job; None: the partition's default limit
    nodes: int = 1
    gpus_per_node: int = 1           # = trainer.devices = --ntasks-per-node (one rank per GPU); 0: CPU
    cpus_per_task: int | None = None
    mem: str | None = None           # per node, e.g. 32G
    array_parallelism: int | None = None  # at most this many reference tasks at once (--array=1-K%P)
    job_name: str | None = None      # prefix of the job names; None: run_dir's folder name
    setup: list[str] = field(default_factory=list)  # shell lines before srun: module load, venv activate
    extra_directives: list[str] = field(default_factory=list)  # e.g. --constraint=a100
    python: str = field(default_factory=lambda: sys.executable)  # the Python running `submit`
    wandb_offline: bool = True       # compute nodes usually have no network; `wandb sync` afterwards
    audit: bool = False              # add audit.sbatch (run.py audit) after the target
    audit_queries: str | None = None     # run.py audit --queries, e.g. '[plain, flip]'
    audit_latencies: str | None = None   # run.py audit --latencies, e.g. '[1, 2, 4]'
    workdir: str | None = None       # where the jobs run (relative paths resolve here); None: cwd

    def __post_init__(self) -> None:
        check_int("nodes", self.nodes, 1)
        check_int("gpus_per_node", self.gpus_per_node, 0)
        check_int("cpus_per_task", self.cpus_per_task, 1, optional=True)
        check_int("array_parallelism", self.array_parallelism, 1, optional=True)
        if self.time is not None and not valid_time(str(self.time)):
            raise SlurmError(f"time={self.time!r} is not allowed; allowed: a SLURM time limit, one of "
                             "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (minutes and seconds < 60)")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", str(self.mem)):
            raise SlurmError(f"mem={self.mem!r} is not allowed; allowed: a size such as 16G, 4000M or 0 (all)")
        for name in ("partition", "account", "qos", "job_name"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[\w.,+-]+", str(value)):
                raise SlurmError(f"{name}={value!r} is not allowed; allowed: letters, digits and . , + - _")
        if self.job_name in ("bash", "interactive"):  # Lightning ignores SLURM under these job names
            raise SlurmError(f"job_name={self.job_name!r} is not allowed; Lightning turns SLURM detection off "
                             "for 'bash' and 'interactive'")
        for line in self.extra_directives:
            if not str(line).startswith("--") or "\n" in str(line):
                raise SlurmError(f"extra_directives: {line!r} is not allowed; allowed: one sbatch option "
                                 "such as --constraint=a100")
        if self.audit_queries is not None or self.audit_latencies is not None:
            self.audit = True

    @property
    def ntasks_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


def check_int(name: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SlurmError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")


def valid_time(text: str) -> bool:
    """SLURM's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; the fields after
    the first one are minutes or seconds, so below 60."""
    m = re.fullmatch(r"(?:\d+-)?\d+(?::(\d+))?(?::(\d+))?", text)
    return bool(m) and all(int(f) < 60 for f in m.groups() if f is not None)


# -- reading run.py's config -----------------------------------------------------------------
def check_passthrough(args: list[str]) -> None:
    """Flags meant for run.py: only its own keys, and none that each job sets by itself."""
    for token in args:
        if not token.startswith("--"):
            continue
        key = token[2:].split("=", 1)[0].rstrip("+")
        if key in SET_PER_JOB:
            raise SlurmError(f"--{key} is not allowed here: {SET_PER_JOB[key]}")
        if key not in PASS_KEYS and not key.startswith(PASS_PREFIXES):
            raise SlurmError(f"--{key} is not allowed; allowed: the SLURM flags (see --help) and run.py's "
                             "--config, --run_dir, --data.*, --model.*, --trainer.*, --seed_everything, --references")


def load_config(args: list[str]) -> dict:
    """run.py's configuration for these flags, resolved and checked by the same parser as
    `run.py fit` (configs/default.yaml, each --config in order, then flags)."""
    from training.cli import parse_config

    try:
        return parse_config(list(args))
    except ConfigError as err:
        raise SlurmError(str(err)) from None


def study(args: list[str]) -> tuple[str, int, dict, dict]:
    """(run_dir, K, trainer config, data config) of the run.py arguments, checked."""
    check_passthrough(args)
    cfg = load_config(args)
    run_dir = cfg.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir or re.search(r"\s", run_dir):
        raise SlurmError(f"run_dir={run_dir!r} is not allowed; allowed: a folder path without whitespace "
                         "(#SBATCH --output cannot hold one)")
    k = (cfg.get("data") or {}).get("num_references")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_REFERENCES or k % 2:
        raise SlurmError(f"data.num_references={k!r} is not allowed; allowed: an even integer in [0, "
                         f"{MAX_REFERENCES}] (references come in complementary pairs)")
    trainer = cfg.get("trainer") or {}
    if trainer.get("default_root_dir") is not None:
        raise SlurmError(f"trainer.default_root_dir={trainer['default_root_dir']!r} is not allowed with submit: "
                         f"{SET_PER_JOB['trainer.default_root_dir']}; allowed: null")
    return run_dir, k, trainer, cfg.get("data") or {}


def check_audit_flags(args: list[str], options: SlurmOptions) -> None:
    """--audit_queries and --audit_latencies through `run.py audit`'s own parser and checks,
    before any script is written: a typo fails now, not after the models have trained."""
    if not options.audit:
        return
    from training.cli import parse_config

    extra = [*(["--queries", options.audit_queries] if options.audit_queries is not None else []),
             *(["--latencies", options.audit_latencies] if options.audit_latencies is not None else [])]
    try:
        parse_config([*args, *extra], "audit")
    except ConfigError as err:
        raise SlurmError(f"audit.sbatch: run.py audit: {err}") from None


def resources_from_data(options: SlurmOptions, data: dict) -> None:
    """Unset --cpus_per_task from the config's data.num_workers (one CPU per loader worker,
    plus the training process), and --mem from that (4 GB per CPU, a common ratio on GPU
    nodes; set --mem for your cluster)."""
    workers = data.get("num_workers") or 0
    if options.cpus_per_task is None:
        options.cpus_per_task = int(workers) + 1
    if options.mem is None:
        options.mem = f"{4 * options.cpus_per_task}G"


def check_data(data: dict, workdir: Path) -> None:
    """The dataset is readable where the jobs will run (relative roots resolve in the workdir):
    a missing CIFAR with download false would otherwise fail every array task after its wait."""
    from datamodules.datasets import check_readable

    if data.get("download"):
        return
    root = Path(data.get("root") or "data")
    try:
        check_readable(data.get("dataset", "digits"), root if root.is_absolute() else workdir / root, False,
                       data.get("image_size"), data.get("resize"))
    except ConfigError as err:
        raise SlurmError(str(err)) from None


# -- the scripts ------------------------------------------------------------------------------
class Raw(str):
    """A shell word written as is (a variable to expand), not quoted."""


def command(words: list[str]) -> str:
    """One shell command, a continuation line per flag so a long command stays readable."""
    groups: list[list[str]] = []
    for w in words:
        if w.startswith("--") or not groups:
            groups.append([])
        groups[-1].append(w if isinstance(w, Raw) else shlex.quote(w))
    return " \\\n    ".join(" ".join(g) for g in groups)


def array_spec(indices: list[int]) -> str:
    """SLURM's --array list for these task ids: runs of consecutive ids as ranges, e.g. 1-3,5,7-8."""
    runs: list[list[int]] = []
    for k in sorted(indices):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def generate(config_args: list[str], run_dir: str, num_references: int, options: SlurmOptions,
             strategy: str | None = "ddp", references: list[int] | None = None,
             target: bool = True) -> dict[str, str]:
    """{file name: text} of references.sbatch (for the references to train), target.sbatch (when
    the target is to train) and audit.sbatch (when asked).

    config_args: run.py flags shared by every job (--config, --data.*, ...), passed through quoted.
    strategy: the trainer strategy for more than one process (None: keep what the config says).
    references: the references to train (default: all K); a resubmit passes the unfinished ones.
    """
    references = list(range(1, num_references + 1)) if references is None else sorted(references)
    o = options
    workdir = Path(o.workdir or os.getcwd()).resolve()
    if re.search(r"\s", str(workdir)):
        raise SlurmError(f"workdir={str(workdir)!r} is not allowed; allowed: a folder path without whitespace")
    logs = slurm_dir(workdir / run_dir)
    name = o.job_name or (Path(run_dir).name or "study")
    run_py = "run.py" if workdir == ROOT else str(ROOT / "run.py")
    world = o.nodes * o.ntasks_per_node
    hardware = ["--trainer.accelerator", "gpu" if o.gpus_per_node else "cpu",
                "--trainer.devices", str(o.ntasks_per_node), "--trainer.num_nodes", str(o.nodes)]
    if world > 1 and strategy and "--trainer.strategy" not in [a.split("=")[0] for a in config_args]:
        hardware += ["--trainer.strategy", strategy]
    sync = f"wandb sync {run_dir}/model_*/wandb/offline-run-*"

    def script(job: str, about: str, body: list[str], *, array: str | None = None, nodes: int = o.nodes,
               tasks: int = o.ntasks_per_node, gpus: int = o.gpus_per_node, requeue: bool = True,
               dependent: bool = True) -> str:
        d = [f"--job-name={name}-{job}"]
        if array:
            d.append(f"--array={array}")
        d += [f"--nodes={nodes}", f"--ntasks-per-node={tasks}"]
        if gpus:
            d.append(f"--gres=gpu:{gpus}")
        d += [f"--{flag}={value}" for flag, value in (("cpus-per-task", o.cpus_per_task), ("mem", o.mem),
              ("partition", o.partition), ("account", o.account), ("qos", o.qos), ("time", o.time))
              if value is not None]
        d += [f"--chdir={workdir}", f"--output={logs}/%x-{'%A_%a' if array else '%j'}.out",
              "--open-mode=append"]  # a requeued job appends to its log instead of truncating it
        if requeue:  # Lightning saves an hpc checkpoint on SIGUSR1 and requeues with scontrol
            d += ["--signal=SIGUSR1@90", "--requeue"]
        if dependent:  # cancelled, not pending forever, when the job it waits for fails
            d.append("--kill-on-invalid-dep=yes")
        d += list(o.extra_directives)
        env = ["export PYTHONUNBUFFERED=1"]
        if o.wandb_offline:
            env.append(f"export WANDB_MODE=offline  # no network on compute nodes; later, on a login node: {sync}")
        lines = ["#!/bin/bash", *[f"# {line}" for line in about.splitlines()],
                 *[f"#SBATCH {x}" for x in d], "", "set -eo pipefail", *o.setup, *env, "", *body, ""]
        return "\n".join(lines)

    fit = [o.python, run_py, "fit", *config_args]
    scripts = {}
    if references:
        p = o.array_parallelism
        array = array_spec(references) + (f"%{p}" if p and p < len(references) else "")
        which = "all K" if len(references) == num_references else f"{len(references)} unfinished of the K"
        scripts["references.sbatch"] = script(
            "refs", f"{which} = {num_references} reference models of {run_dir}: array task k trains "
            f"{run_dir}/model_k.\nA finished model is skipped, an interrupted one resumes from its checkpoint.\n"
            f"Submit: mkdir -p {logs} && sbatch --parsable references.sbatch",
            ["srun " + command([*fit, "--data.model_index", Raw('"$SLURM_ARRAY_TASK_ID"'), *hardware])],
            array=array, dependent=False)
    if target:
        scripts["target.sbatch"] = script(
            "target", f"The target of {run_dir} (model_0) with the MembershipAttack callback; it writes "
            f"{run_dir}/audit/.\nSubmit after the references: sbatch --parsable --dependency=afterok:<references id> "
            "target.sbatch",
            ["srun " + command([*fit, "--data.model_index", "0", *hardware])])
    if o.audit:
        extra = [*(["--queries", o.audit_queries] if o.audit_queries is not None else []),
                 *(["--latencies", o.audit_latencies] if o.audit_latencies is not None else [])]
        one = ["--trainer.accelerator", "gpu" if o.gpus_per_node else "cpu", "--trainer.devices", "1",
               "--trainer.num_nodes", "1"]
        # Audit queries finished checkpoints in one process. No --signal: Lightning only handles
        # SIGUSR1 inside fit, and a rerun reuses the cached signals anyway.
        scripts["audit.sbatch"] = script(
            "audit", f"Attacks the finished checkpoints of {run_dir} (run.py audit), after the target.\n"
            "Submit: sbatch --parsable --dependency=afterok:<target id> audit.sbatch",
            ["srun " + command([o.python, run_py, "audit", *config_args, *extra, *one])],
            nodes=1, tasks=1, gpus=min(o.gpus_per_node, 1), requeue=False)
    return scripts


# -- submitting -------------------------------------------------------------------------------
def job_id(stdout: str) -> str:
    """The job id in `sbatch --parsable` output: 'id' or 'id;cluster'."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    jid = lines[-1].split(";")[0] if lines else ""
    if not re.fullmatch(r"\d+", jid):
        raise RuntimeError(f"sbatch --parsable printed {stdout.strip()!r}, not a job id")
    return jid


def submit(paths: dict[str, Path], sbatch: str = "sbatch") -> dict[str, str]:
    """sbatch each script, each one afterok on the one before: references -> target -> audit.
    Returns {script name: job id}."""
    ids: dict[str, str] = {}
    previous = None
    for name in ("references.sbatch", "target.sbatch", "audit.sbatch"):
        if name not in paths:
            continue
        cmd = [sbatch, "--parsable", *([f"--dependency=afterok:{previous}"] if previous else []), str(paths[name])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                said = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
                raise RuntimeError(f"`{shlex.join(cmd)}` failed with exit code {done.returncode}: {said[-1]}")
            previous = ids[name] = job_id(done.stdout)
        except (OSError, RuntimeError) as err:
            undo = f"; already submitted: {ids} (scancel {' '.join(ids.values())})" if ids else ""
            raise RuntimeError(f"{err}{undo}") from None
    return ids


# -- command line -----------------------------------------------------------------------------
def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: an integer") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other bad value, instead of usage + exit
        raise SlurmError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="run.py submit", allow_abbrev=False,
        description="Generate SLURM scripts for the study that `run.py fit` with the same flags would run "
                    "(a job array of references, then the target, then an optional audit); print them, "
                    "write them (--out), or sbatch them (--submit). Other flags (--config, --run_dir, "
                    "--data.*, --model.*, --trainer.*) are passed to run.py in every job.")
    p.add_argument("--slurm_config", help="YAML file with any of the options below (flags win)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--time", help="time limit per job: MM, HH:MM:SS, D-HH:MM:SS, ...")
    p.add_argument("--nodes", type=integer, help="nodes per job (trainer.num_nodes); default 1")
    p.add_argument("--gpus_per_node", "--gpus", type=integer, dest="gpus_per_node",
                   help="GPUs per node = trainer.devices = --ntasks-per-node; 0 trains on CPU; default 1")
    p.add_argument("--cpus_per_task", type=integer)
    p.add_argument("--mem", help="memory per node, e.g. 32G")
    p.add_argument("--array_parallelism", type=integer, help="run at most this many reference tasks at once")
    p.add_argument("--job_name", help="job name prefix (default: run_dir's folder name)")
    p.add_argument("--setup", action="append", help="a shell line run before srun (repeatable), "
                   "e.g. 'source .venv/bin/activate'")
    p.add_argument("--extra_directive", action="append", dest="extra_directives",
                   help="another #SBATCH option (repeatable), e.g. --extra_directive=--constraint=a100")
    p.add_argument("--python", help="the Python on the compute nodes (default: the one running submit, "
                   f"here {sys.executable})")
    p.add_argument("--wandb_offline", action=argparse.BooleanOptionalAction, default=None,
                   help="export WANDB_MODE=offline in the jobs (default: yes)")
    p.add_argument("--audit", action=argparse.BooleanOptionalAction, default=None,
                   help="add audit.sbatch: run.py audit after the target")
    p.add_argument("--audit_queries", help="run.py audit --queries, e.g. '[plain, flip]' (implies --audit)")
    p.add_argument("--audit_latencies", help="run.py audit --latencies, e.g. '[1, 2, 4]' (implies --audit)")
    p.add_argument("--workdir", help="folder the jobs run in (default: the current one)")
    p.add_argument("--out", help="write the scripts to this folder (default with --submit: run_dir/slurm)")
    p.add_argument("--submit", action="store_true", help="sbatch the scripts, chained with afterok dependencies")
    return p


FIELDS = {f.name for f in dataclasses.fields(SlurmOptions)}


def raw_scalar(path: str, key: str) -> str:
    """The text of a top-level YAML scalar as written, before YAML turns it into a number."""
    import yaml

    return next(v.value for k, v in yaml.compose(Path(path).read_text()).value if k.value == key)


def options_from(flags: argparse.Namespace) -> SlurmOptions:
    values: dict = {}
    if flags.slurm_config:
        from omegaconf import OmegaConf

        if not Path(flags.slurm_config).is_file():
            raise SlurmError(f"--slurm_config {flags.slurm_config}: no such file")
        values = OmegaConf.to_container(OmegaConf.load(flags.slurm_config), resolve=True) or {}
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise SlurmError(f"--slurm_config {flags.slurm_config}: unknown key(s) {unknown}; allowed: {sorted(FIELDS)}")
        if isinstance(values.get("time"), int):  # YAML 1.1 reads an unquoted 12:00:00 as 43200 (30 days
            values["time"] = raw_scalar(flags.slurm_config, "time")  # to SLURM): keep the text as written
    values.update({k: v for k, v in vars(flags).items() if k in FIELDS and v is not None})
    for key in ("setup", "extra_directives"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    return SlurmOptions(**values)


def submit_main(argv: list[str]) -> int:
    """`run.py submit ...`: 0 when done, 2 for a bad option (one line, nothing written), 1 when sbatch fails."""
    try:
        flags, passthrough = parser().parse_known_args(argv)
        options = options_from(flags)
        run_dir, k, trainer, data = study(passthrough)
        check_audit_flags(passthrough, options)
        workdir = Path(options.workdir or os.getcwd()).resolve()
        resources_from_data(options, data)
        if flags.submit:  # the data must be there before anything waits in a queue for it
            check_data(data, workdir)
        finished = finished_models(workdir / run_dir, range(k + 1))
        todo = [j for j in range(1, k + 1) if j not in finished]
        if not todo and 0 in finished and not options.audit:
            print(f"every model of {run_dir} has finished (model_*/done.json); nothing to submit. "
                  "`run.py audit` re-attacks them; --audit adds an audit job.", file=sys.stderr)
            return 0
        configured = trainer.get("strategy")
        scripts = generate(passthrough, run_dir, k, options, strategy="ddp" if configured in (None, "auto") else None,
                           references=todo, target=0 not in finished)
    except SlurmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:  # run.py's parser printed its one-line error
        return err.code if isinstance(err.code, int) else 2
    skipped = sorted(finished)
    if skipped:
        print(f"finished earlier, not submitted: {', '.join(f'model_{j}' for j in skipped)}", file=sys.stderr)
    slurm_dir(workdir / run_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder
    if not (flags.out or flags.submit):
        for name, text in scripts.items():
            print(f"# ==> {name} <==\n{text}")
        print("nothing written or submitted: --out DIR writes these scripts, --submit also sbatches them",
              file=sys.stderr)
        return 0
    out = Path(flags.out) if flags.out else slurm_dir(workdir / run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in scripts.items():
        paths[name] = out / name
        paths[name].write_text(text)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if not flags.submit:
        return 0
    try:
        ids = submit(paths)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(" ".join(f"{name.split('.')[0]}={jid}" for name, jid in ids.items()))
    print(f"watch: squeue -j {','.join(ids.values())}; logs: {workdir / run_dir / 'slurm'}/"
          + (f"; W&B afterwards: wandb sync {run_dir}/model_*/wandb/offline-run-*" if options.wandb_offline else ""),
          file=sys.stderr)
    return 0


def main() -> None:
    sys.exit(submit_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
