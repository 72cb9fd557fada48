"""Error bars: confidence intervals for ROC metrics, for means over targets, and verdicts.

One target's audit:

- ``roc_intervals``: a stratified bootstrap of ``roc_metrics`` (members and
  non-members resampled separately, keeping their counts), all replicates at
  once; for AUC, DeLong's interval by default (``delong_auc_interval``);
- ``measurable`` / ``resolution_note``: with N_out non-members, TPR at an FPR
  level below 1 / N_out is not measured, and gets no interval.

Several targets or seeds:

- ``mean_interval``: the t-interval of a mean;
- ``paired_difference`` and ``verdict``: does "A > B" hold, reverse, or stay
  unresolved at the chosen level?
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

# scipy is imported inside the one function that uses it (mean_interval): scipy.stats takes 0.85 s
# to import here (`import attacks` went from 1.9 s to 2.7 s), and every run.py command imports it.
from ._checks import as_float64, as_mask
from .metrics import FPR_LEVELS

METRICS = ("auc", *FPR_LEVELS)
DEFAULT_METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")
AUC_METHODS = ("delong", "bootstrap")
# Draws (replicates x audit samples) per chunk of the bootstrap: memory stays bounded at any N (a
# chunk's tensors are a few MB). At N = 60,000 a chunk is 4 replicates, at N = 1,617 it is 162.
# Of 2^16 to 2^20 draws per chunk, 2^18 was the fastest or within the noise of it at both sizes
# (B = 1,000, medians of interleaved rounds, 1 thread; at N = 60,000 with AUC 34x one roc_metrics
# call, against 43x for 2^16 and 45x for 2^20). The chunk size decides which random numbers go to which
# replicate, so it is a constant: the same inputs and seed give the same replicates in any process.
_CHUNK_ELEMENTS = 2**18


def measurable(level: float, num_nonmembers: int) -> bool:
    """Whether TPR at FPR <= ``level`` can be measured with ``num_nonmembers`` non-members.

    The smallest non-zero FPR is 1 / N_out, so a level below it (other than 0)
    only ever admits the ROC point FPR = 0: ``roc_metrics`` then reports TPR at
    0% FPR under another name. Level 0 itself is measured (the members ranked
    above every non-member), as ``tpr@0%fpr``.
    """
    _check_level("level", level, closed=True)
    _check_count("num_nonmembers", num_nonmembers)
    return level == 0 or 1 / num_nonmembers <= level


def resolution_note(level: float, num_nonmembers: int) -> str | None:
    """``None`` when ``measurable``; else the text a report prints instead of a number,
    e.g. ``n/a (N_out = 808 < 1,000)`` for level 0.1% with 808 non-members."""
    if measurable(level, num_nonmembers):
        return None
    need = math.ceil(1 / level)  # the fewest non-members that measure this level (1 / n <= level)
    while 1 / need > level:
        need += 1
    while 1 / (need - 1) <= level:
        need -= 1
    return f"n/a (N_out = {num_nonmembers:,} < {need:,})"


def roc_intervals(scores, is_member, *, num_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                  metrics=DEFAULT_METRICS, auc: str = "delong") -> dict[str, tuple[float, float] | None]:
    """Confidence intervals (lo, hi) for the ``roc_metrics`` of one audit.

    TPR metrics (and AUC with ``auc="bootstrap"``): the percentile interval of
    a stratified bootstrap. Each of ``num_bootstrap`` replicates draws N_in
    members with replacement from the N_in members and N_out non-members from
    the N_out non-members, so every replicate keeps both counts; its metrics
    are those of ``roc_metrics`` on the resampled scores (exact AUC with ties
    counting 1/2; TPR at FPR <= level the largest TPR among ROC points whose
    FPR <= level). The interval is the (1 - level)/2 and (1 + level)/2
    quantiles of the replicates (linear interpolation). The point estimate
    stays ``roc_metrics(scores, is_member)``.

    Seeded: a ``torch.Generator`` seeded with ``seed`` draws every replicate,
    so the same inputs and seed give the same intervals in any process.

    AUC: ``auc="delong"`` (default) uses ``delong_auc_interval``. It needs no
    resampling, so it is deterministic without a seed and costs one sort; in
    the coverage test (binormal scores, 1,000 + 1,000 samples, 400 repetitions)
    both methods cover the true AUC at the nominal rate, so the exact one is
    the default. ``auc="bootstrap"`` keeps the bootstrap's interval.

    A TPR metric whose level is below 1 / N_out (``measurable`` is False) maps
    to None: it cannot be measured, so it has no interval.

    Coverage, measured on binormal scores (members N(1.5, 1), non-members
    N(0, 1), 400 audits, B = 1,000): AUC 95.75% (DeLong 95.0%) and TPR at 1%
    FPR 95.75% with 1,000 + 1,000 samples. It drops when the level allows few
    false positives, L = floor(level * N_out): TPR at 0.1% FPR covered 77% at
    L = 1 (N_out = 1,000), 91% at L = 2, 93% at L = 5 and at L = 10. The
    percentile bootstrap cannot see beyond the few non-members that set such
    a threshold; treat intervals with L < 5 as rough.

    Cost: sorting once, then per replicate a few passes over its N integer
    sample counts (drawn as multinomial counts, in chunks of bounded memory).
    ``benchmarks/bootstrap.py`` measures B = 1,000 against one ``roc_metrics``
    call.
    """
    s, y = _scores_and_labels(scores, is_member)
    _check_count("num_bootstrap", num_bootstrap, minimum=2)
    _check_seed(seed)
    _check_level("level", level)
    metrics = _check_metrics(metrics)
    if auc not in AUC_METHODS:
        raise ValueError(f"auc must be one of {', '.join(AUC_METHODS)}, got {auc!r}")
    rank = _Ranking(s, y)
    out: dict[str, tuple[float, float] | None] = {}
    boot = [m for m in metrics if not (m == "auc" and auc == "delong")
            and (m == "auc" or measurable(FPR_LEVELS[m], rank.num_out))]
    reps = _bootstrap(rank, boot, num_bootstrap, seed) if boot else {}
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    for m in metrics:
        if m == "auc" and auc == "delong":
            out[m] = _delong(rank, level)
        elif m in reps:
            lo, hi = torch.quantile(reps[m], q).tolist()
            out[m] = (lo, hi)
        else:
            out[m] = None
    return out


def roc_bootstrap(scores, is_member, *, num_bootstrap: int = 1000, seed: int = 0,
                  metrics=DEFAULT_METRICS) -> dict[str, Tensor]:
    """Every replicate of ``roc_intervals``' bootstrap: {metric: float64 [num_bootstrap]}.

    For callers that need more than an interval (a histogram, a standard
    error). Unmeasurable TPR metrics are left out.
    """
    s, y = _scores_and_labels(scores, is_member)
    _check_count("num_bootstrap", num_bootstrap, minimum=1)
    _check_seed(seed)
    metrics = _check_metrics(metrics)
    rank = _Ranking(s, y)
    return _bootstrap(rank, [m for m in metrics if m == "auc" or measurable(FPR_LEVELS[m], rank.num_out)],
                      num_bootstrap, seed)


def delong_auc_interval(scores, is_member, level: float = 0.95) -> tuple[float, float]:
    """DeLong's confidence interval for the AUC (DeLong, DeLong and Clarke-Pearson, 1988).

    The AUC is the Mann-Whitney statistic: the mean over (member i, non-member
    j) pairs of psi = 1 if s_i > s_j, 1/2 if equal, 0 otherwise. Its structural
    components are V10_i = mean_j psi(i, j) (the non-members below member i,
    ties counting 1/2, over N_out) and V01_j = mean_i psi(i, j) (the members
    above non-member j, likewise, over N_in), counted from one sort as in the
    bootstrap: the mid-rank formulation. Var(AUC) = S10 / N_in + S01 / N_out with
    S10, S01 the sample variances (ddof 1) of the components, and the interval is
    AUC +- z_{(1+level)/2} sqrt(Var), clipped to [0, 1].

    With one member or one non-member a variance is undefined: (nan, nan).
    Perfectly separated scores have zero variance and give (AUC, AUC).
    """
    s, y = _scores_and_labels(scores, is_member)
    _check_level("level", level)
    return _delong(_Ranking(s, y), level)


def _delong(rank: _Ranking, level: float) -> tuple[float, float]:
    n_in, n_out = rank.num_in, rank.num_out
    if n_in < 2 or n_out < 2:
        return (math.nan, math.nan)
    v10 = 1.0 - (rank.lo + rank.hi).to(torch.float64) / (2 * n_out)
    v01 = (rank.above[:-1] + rank.above_or_tied).to(torch.float64) / (2 * n_in)
    auc = float(v10.mean())
    var = float(v10.var(correction=1)) / n_in + float(v01.var(correction=1)) / n_out
    half = statistics.NormalDist().inv_cdf((1 + level) / 2) * math.sqrt(var)
    return (max(0.0, auc - half), min(1.0, auc + half))


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one number per target or seed).

    mean +- t_{n-1, (1+level)/2} * sd / sqrt(n), sd with ddof 1. It treats the n
    values as independent draws (targets with their own seeds and plans).

    n = 1 gives (nan, nan): one value has no spread to estimate, and a study
    cell with a single seed should print "n/a", not stop the report. An empty
    ``values`` is an error.
    """
    from scipy import stats  # here, not at the top: see the note at the imports

    v = as_float64("values", values, 1)
    _check_level("level", level)
    n = v.numel()
    if n == 0:
        raise ValueError("values must hold at least one number, got none")
    if n == 1:
        return (math.nan, math.nan)
    mean, sd = float(v.mean()), float(v.std(correction=1))
    half = float(stats.t.ppf((1 + level) / 2, df=n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def paired_difference(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of the paired differences a_i - b_i, with ``mean_interval``'s t-interval.

    Pair the values that share everything but the compared factor (the same
    seed and plan, SNN vs ANN). With one pair: (a_0 - b_0, nan, nan).
    """
    a = as_float64("a", a, 1)
    b = as_float64("b", b, 1)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"a and b must be non-empty and of the same length (paired), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    d = a - b
    lo, hi = mean_interval(d, level)
    return (float(d.mean()), lo, hi)


def verdict(lo: float, hi: float, expected_sign: int, level: float = 0.95) -> str:
    """"holds" if (lo, hi) excludes 0 on the ``expected_sign`` side (+1 or -1), "reversed"
    if it excludes 0 on the other side, else "not resolved at 95%" (the level in words).

    An interval that touches 0, or a NaN one (n = 1), is not resolved.
    """
    if isinstance(expected_sign, bool) or expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    _check_level("level", level)
    if not (lo <= hi):  # NaN, or a reversed pair
        if math.isnan(lo) or math.isnan(hi):
            return f"not resolved at {level:.0%}"
        raise ValueError(f"lo must be <= hi, got lo = {lo!r} and hi = {hi!r}")
    sign = 1 if lo > 0 else -1 if hi < 0 else 0
    if sign == 0:
        return f"not resolved at {level:.0%}"
    return "holds" if sign == expected_sign else "reversed"


# --- the vectorised bootstrap ------------------------------------------------------------------


class _Ranking:
    """What every replicate needs from the one sort.

    Members and non-members are numbered in descending score order. A replicate
    is a count per member (summing to N_in) and per non-member (summing to
    N_out); CSn[k] = the total count of the first k non-members.

    - AUC: for member i, lo_i / hi_i = the number of non-members scored > / >=
      s_i. A member count placed in slot lo_i (and again in slot hi_i) of a
      vector M over 0..N_out gives 2 AUC N_in N_out = 2 N_in N_out - sum_k M[k]
      CSn[k]: a member loses one pair per non-member above it, half a pair per
      tie.
    - TPR at FPR <= level: with L the largest FP count whose rate is <= level,
      j* = the first non-member whose inclusive count CSn[j* + 1] exceeds L.
      Every ROC point before s_{j*}'s tie group qualifies and none after, so TP
      = the count of members scored above s_{j*}, i.e. of the members numbered
      below above[j*] (above[N_out] = N_in: no non-member exceeds L). Without
      member / non-member ties they are also the members in slots <=
      above_out[j*], the number of non-members scored above s_{j*}.

    DeLong's interval reads the same counts: lo, hi, and above / above_or_tied
    (the members scored > / >= each non-member).
    """

    def __init__(self, s: Tensor, y: Tensor):
        pos = torch.sort(s[y], descending=True).values
        neg = torch.sort(s[~y], descending=True).values
        self.num_in, self.num_out = pos.numel(), neg.numel()
        neg_up = neg.flip(0)
        self.lo = self.num_out - torch.searchsorted(neg_up, pos, right=True)
        self.hi = self.num_out - torch.searchsorted(neg_up, pos, right=False)
        self.ties = bool((self.lo != self.hi).any())
        pos_up = pos.flip(0)
        above = self.num_in - torch.searchsorted(pos_up, neg, right=True)  # members > s_j
        self.above = torch.cat([above, torch.tensor([self.num_in])])
        self.above_or_tied = self.num_in - torch.searchsorted(pos_up, neg, right=False)  # members >= s_j
        above_out = self.num_out - torch.searchsorted(neg_up, neg, right=True)  # non-members > s_j
        self.above_out = torch.cat([above_out, torch.tensor([self.num_out])])


class _Buffers:
    """Working tensors reused from chunk to chunk. Allocated afresh for every chunk, their pages went
    back to the system and faulted in again: five identical bootstraps (N = 60,000, B = 1,000, with
    AUC) took 0.38 s to 0.93 s here, and 0.39 s to 0.47 s with reuse."""

    def __init__(self):
        self._tensors: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        n = math.prod(shape)
        t = self._tensors.get(name)
        if t is None or t.numel() < n or t.dtype != dtype:
            t = self._tensors[name] = torch.empty(n, dtype=dtype)
        return t[:n].view(shape)


def _bootstrap(rank: _Ranking, metrics: list[str], num_bootstrap: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // (rank.num_in + rank.num_out))
    buffers = _Buffers()
    parts = []
    for start in range(0, num_bootstrap, per_chunk):
        b = min(per_chunk, num_bootstrap - start)
        # int32 draws: torch's CPU randint took 2.7 ns per int32 and 5.9 ns per int64 here
        members = buffers.get("members", (b, rank.num_in), torch.int32)
        nonmembers = buffers.get("nonmembers", (b, rank.num_out), torch.int32)
        torch.randint(rank.num_in, (b, rank.num_in), generator=g, out=members)
        torch.randint(rank.num_out, (b, rank.num_out), generator=g, out=nonmembers)
        parts.append(_replicate_metrics(rank, members, nonmembers, metrics, buffers))
    return {m: torch.cat([p[m] for p in parts]) for m in metrics}


def _replicate_metrics(rank: _Ranking, members: Tensor, nonmembers: Tensor, metrics: list[str],
                       buffers: _Buffers | None = None) -> dict[str, Tensor]:
    """The metrics of each row's resample: ``members`` [B, N_in] and ``nonmembers`` [B, N_out] hold
    the drawn indices (in descending score order)."""
    buffers = buffers or _Buffers()
    b, f64 = members.shape[0], torch.float64
    out, csn, m = {}, None, None
    if "auc" in metrics:
        # Counts and their sums are whole numbers below 2^53: float64 holds them and every sum
        # exactly, whatever the order of addition (so any thread count gives the same result).
        one = torch.ones((), dtype=f64)
        slots = buffers.get("slots", (b * rank.num_in,), torch.int64)
        m = buffers.get("m", (b, rank.num_out + 1), f64).zero_()
        torch.index_select(rank.lo, 0, members.reshape(-1), out=slots)
        m.scatter_add_(1, slots.view(b, -1), one.expand(members.shape))
        if rank.ties:
            torch.index_select(rank.hi, 0, members.reshape(-1), out=slots)
            m.scatter_add_(1, slots.view(b, -1), one.expand(members.shape))
        index = buffers.get("index", (b, rank.num_out), torch.int64)
        index.copy_(nonmembers)
        wn = buffers.get("wn", (b, rank.num_out), f64).zero_()
        wn.scatter_add_(1, index, one.expand(nonmembers.shape))
        csn = torch.cumsum(wn, 1, out=buffers.get("csn", (b, rank.num_out), f64))  # csn[:, k - 1] = CSn[k]
        wrong2 = torch.linalg.vecdot(m[:, 1:], csn) * (1 if rank.ties else 2)
        pairs2 = 2 * rank.num_in * rank.num_out
        out["auc"] = (pairs2 - wrong2) / pairs2  # exact integers, one rounding: as roc_metrics
    tpr_metrics = [k for k in metrics if k != "auc"]
    if tpr_metrics:
        limits = torch.tensor([_fp_limit(FPR_LEVELS[k], rank.num_out) for k in tpr_metrics])
        first = _first_above(nonmembers, limits, rank.num_out, csn, buffers)  # [B, M]: j*
        if m is not None and not rank.ties:
            # members above s_{j*} are those in slots <= above_out[j*] (their lo = hi): sum the
            # few slots up to the deepest cut instead of comparing all N_in draws per level
            cut = rank.above_out[first]
            tp = torch.gather(torch.cumsum(m[:, :int(cut.max()) + 1], 1), 1, cut)
        else:
            cut = rank.above[first].to(torch.int32)
            below = buffers.get("below", tuple(members.shape), torch.bool)
            # int32 against int32 into a reused buffer: 80 us per 162 x 809 draws here, 125 us for the
            # plain (members < cut).sum(1)
            tp = torch.stack([torch.lt(members, cut[:, k:k + 1], out=below).sum(1, dtype=torch.int32)
                              for k in range(len(tpr_metrics))], 1)
        for k, name in enumerate(tpr_metrics):
            out[name] = tp[:, k].to(f64) / rank.num_in
    return out


def _first_above(nonmembers: Tensor, limits: Tensor, num_out: int, csn: Tensor | None,
                 buffers: _Buffers) -> Tensor:
    """[B, M]: per row, the first non-member whose inclusive count exceeds each limit (num_out if none).

    ``csn`` holds the rows' inclusive non-member counts when the AUC already built them. (Counting
    only the draws below a window around the limit was slower: 445 us per chunk of 162 x 808 draws
    against 275 us for all counts, and 373 against 299 us for 4 x 30,000.)
    """
    b = nonmembers.shape[0]
    if csn is None:
        index = buffers.get("index", (b, num_out), torch.int64)
        index.copy_(nonmembers)
        counts = buffers.get("counts", (b, num_out), torch.int64).zero_()
        counts.scatter_add_(1, index, torch.ones((), dtype=torch.int64).expand(b, num_out))
        csn = torch.cumsum(counts, 1, out=buffers.get("csn_int", (b, num_out), torch.int64))
    return torch.searchsorted(csn, limits.to(csn.dtype).expand(b, -1).contiguous(), right=True)


def _fp_limit(level: float, num_out: int) -> int:
    """The largest false-positive count k with k / num_out <= level, in float64 as ``roc_metrics``
    compares (the float division can round across an integer boundary, so check the neighbours)."""
    k = min(num_out, math.floor(level * num_out))
    while k + 1 <= num_out and (k + 1) / num_out <= level:
        k += 1
    while k > 0 and k / num_out > level:
        k -= 1
    return k


# --- checks ------------------------------------------------------------------------------------


def _scores_and_labels(scores, is_member) -> tuple[Tensor, Tensor]:
    s = as_float64("scores", scores, 1)
    y = as_mask("is_member", is_member, tuple(s.shape))
    pos = int(y.sum())
    if pos == 0 or pos == y.numel():
        raise ValueError(f"is_member must hold both members and non-members, got {pos} member(s) and "
                         f"{y.numel() - pos} non-member(s)")
    return s, y


def _check_metrics(metrics) -> list[str]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty list of {', '.join(METRICS)}, got {metrics!r}")
    return metrics


def _check_level(name: str, level, closed: bool = False) -> None:
    ok = isinstance(level, (int, float)) and not isinstance(level, bool) and math.isfinite(level)
    if closed:
        ok = ok and 0 <= level <= 1
        allowed = "in [0, 1]"
    else:
        ok = ok and 0 < level < 1
        allowed = "in (0, 1), e.g. 0.95"
    if not ok:
        raise ValueError(f"{name} must be a number {allowed}, got {level!r}")


def _check_count(name: str, n, minimum: int = 1) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
