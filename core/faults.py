"""Fault injection for the kill tests: SNN_MIA_KILL_AT=<glob> makes the process kill itself
with SIGKILL (as `kill -9` would) the first time it reaches a point whose name matches.

Points: `batch:model_<k>:<epoch>:<batch>` (after a training batch), `audit:model_<k>:epoch_<e>`
(inside an epoch's audit, after the target's first query pass), and `write:<path>` (inside an
atomic write, after the temporary file is written and before it replaces <path>). Unset, the
check costs one dictionary lookup."""

from __future__ import annotations

import fnmatch
import os
import signal


def kill_point(name: str) -> None:
    pattern = os.environ.get("SNN_MIA_KILL_AT")
    if pattern and fnmatch.fnmatchcase(name, pattern):
        os.kill(os.getpid(), signal.SIGKILL)
