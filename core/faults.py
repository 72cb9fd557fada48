"""Fault injection for the kill and cluster tests: SNN_MIA_KILL_AT=<glob> makes the process
kill itself with SIGKILL (as `kill -9` would) the first time it reaches a point whose name
matches; SNN_MIA_PAUSE_AT=<glob> makes it sleep SNN_MIA_PAUSE_S seconds there instead (a
window in which a test sends a signal, as a cluster would).

Points: `batch:model_<k>:<epoch>:<batch>` (after a training batch), `audit:model_<k>:epoch_<e>`
(inside an epoch's audit, after the target's first query pass), `fitted:model_<k>` (after a
model's training returned, before its done.json) and `write:<path>` (inside an atomic write,
after the temporary file is written and before it replaces <path>). Unset, the check costs
two dictionary lookups.

Under DDP every rank reaches the points; SNN_MIA_KILL_RANK=<r> restricts the kill to global
rank r (the DDP kill matrix kills one rank and lets the others see it die)."""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time


def _this_rank(wanted: str | None) -> bool:
    """Whether this process is global rank `wanted` (None: any rank)."""
    if wanted is None:
        return True
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    return rank == int(wanted)


def kill_point(name: str) -> None:
    pattern = os.environ.get("SNN_MIA_KILL_AT")
    if pattern and fnmatch.fnmatchcase(name, pattern) and _this_rank(os.environ.get("SNN_MIA_KILL_RANK")):
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("SNN_MIA_PAUSE_AT")
    if pause and fnmatch.fnmatchcase(name, pause):
        seconds = float(os.environ.get("SNN_MIA_PAUSE_S", "30"))
        print(f"pausing {seconds:g} s at {name} (SNN_MIA_PAUSE_AT)", file=sys.stderr, flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # a signal handler may cut a sleep short: sleep out the rest
            time.sleep(max(0.0, end - time.monotonic()))


# -- DP faults, for the tests of the DP audit (tests/test_dp_audit.py) only ---------------------
# SNN_MIA_DP_FAULT=<name> breaks DP-SGD on purpose, so that a test can show that the white-box
# canary audit catches it:
#   no_noise       the optimizer adds no noise, while the accountant is told the claimed noise
#                  multiplier (and so reports the claimed epsilon);
#   per_step_clip  an SNN's per-sample gradient is clipped per (sample, time step) row instead of
#                  once per sample (its T steps summed first): the sensitivity grows up to T-fold.
DP_FAULTS = ("no_noise", "per_step_clip")


def dp_fault(name: str) -> bool:
    """Whether the test-only DP fault `name` is switched on (unset: two dictionary lookups)."""
    value = os.environ.get("SNN_MIA_DP_FAULT")
    if value and value not in DP_FAULTS:
        raise ValueError(f"SNN_MIA_DP_FAULT={value!r} is not a fault; expected one of {', '.join(DP_FAULTS)}")
    return value == name
