"""Seeds derived from a tuple of parts: a training epoch's random streams are a function of
(model seed, epoch) alone, so a resumed epoch replays the uninterrupted one exactly and
nothing outside training (an audit pass, a progress bar) can shift them."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed from the parts' text: stable across processes, platforms and versions."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
