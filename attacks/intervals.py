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

import torch
from torch import Tensor

# scipy is imported inside the functions that use it: scipy.stats takes 0.85 s to import here
# (`import attacks` went from 1.9 s to 2.7 s), and every run.py command imports this package.
from ._checks import as_float64, as_mask
from .metrics import FPR_LEVELS

METRICS = ("auc", *FPR_LEVELS)
DEFAULT_METRICS = ("auc", "tpr@1%fpr", "tpr@0.1%fpr")
AUC_METHODS = ("delong", "bootstrap")
# Draws (replicates x audit samples) per chunk of the bootstrap: memory stays bounded at any N (a
# chunk's tensors are a few MB). At N = 60,000 a chunk is 4 replicates, at N = 1,617 it is 162.
# Measured here with B = 1,000 (median of 5 interleaved rounds, 1 thread), chunks of 2^18 draws ran
# fastest: at N = 60,000, 33x one roc_metrics call with AUC, against 40x (2^16) and 43x (2^20), as
# larger chunks allocate fresh pages. The chunk size decides which random numbers go to which
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
    num_out = int((~y).sum())
    out: dict[str, tuple[float, float] | None] = {}
    boot = [m for m in metrics if not (m == "auc" and auc == "delong")
            and (m == "auc" or measurable(FPR_LEVELS[m], num_out))]
    reps = _bootstrap(s, y, boot, num_bootstrap, seed) if boot else {}
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    for m in metrics:
        if m == "auc" and auc == "delong":
            out[m] = delong_auc_interval(s, y, level=level)
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
    num_out = int((~y).sum())
    return _bootstrap(s, y, [m for m in metrics if m == "auc" or measurable(FPR_LEVELS[m], num_out)],
                      num_bootstrap, seed)


def delong_auc_interval(scores, is_member, level: float = 0.95) -> tuple[float, float]:
    """DeLong's confidence interval for the AUC (DeLong, DeLong and Clarke-Pearson, 1988).

    The AUC is the Mann-Whitney statistic: the mean over (member i, non-member
    j) pairs of psi = 1 if s_i > s_j, 1/2 if equal, 0 otherwise. Its structural
    components V10_i = mean_j psi(i, j) and V01_j = mean_i psi(i, j) come from
    mid-ranks (ties count 1/2, as in the AUC): V10_i = (R_i - R+_i) / N_out with
    R the mid-rank among all samples and R+ among members, and V01_j = 1 -
    (R_j - R-_j) / N_in. Then Var(AUC) = S10 / N_in + S01 / N_out with S10, S01
    the sample variances (ddof 1) of the components, and the interval is
    AUC +- z_{(1+level)/2} sqrt(Var), clipped to [0, 1].

    With one member or one non-member a variance is undefined: (nan, nan).
    Perfectly separated scores have zero variance and give (AUC, AUC).
    """
    from scipy import stats  # here, not at the top: see the imports

    s, y = _scores_and_labels(scores, is_member)
    _check_level("level", level)
    pos, neg = s[y].numpy(), s[~y].numpy()
    n1, n0 = len(pos), len(neg)
    if n1 < 2 or n0 < 2:
        return (math.nan, math.nan)
    r_all = stats.rankdata(s.numpy())
    v10 = (r_all[y.numpy()] - stats.rankdata(pos)) / n0
    v01 = 1.0 - (r_all[~y.numpy()] - stats.rankdata(neg)) / n1
    auc = float(v10.mean())
    var = v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0
    half = float(stats.norm.ppf((1 + level) / 2)) * math.sqrt(var)
    return (max(0.0, auc - half), min(1.0, auc + half))


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one number per target or seed).

    mean +- t_{n-1, (1+level)/2} * sd / sqrt(n), sd with ddof 1. It treats the n
    values as independent draws (targets with their own seeds and plans).

    n = 1 gives (nan, nan): one value has no spread to estimate, and a study
    cell with a single seed should print "n/a", not stop the report. An empty
    ``values`` is an error.
    """
    from scipy import stats  # here, not at the top: see the imports

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
    """

    def __init__(self, s: Tensor, y: Tensor):
        pos = torch.sort(s[y], descending=True).values
        neg = torch.sort(s[~y], descending=True).values
        self.num_in, self.num_out = pos.numel(), neg.numel()
        neg_up = neg.flip(0)
        self.lo = self.num_out - torch.searchsorted(neg_up, pos, right=True)
        self.hi = self.num_out - torch.searchsorted(neg_up, pos, right=False)
        self.ties = bool((self.lo != self.hi).any())
        above = self.num_in - torch.searchsorted(pos.flip(0), neg, right=True)  # members > s_j
        self.above = torch.cat([above, torch.tensor([self.num_in])])
        above_out = self.num_out - torch.searchsorted(neg_up, neg, right=True)  # non-members > s_j
        self.above_out = torch.cat([above_out, torch.tensor([self.num_out])])


def _bootstrap(s: Tensor, y: Tensor, metrics: list[str], num_bootstrap: int, seed: int) -> dict[str, Tensor]:
    rank = _Ranking(s, y)
    g = torch.Generator().manual_seed(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // s.numel())
    parts = []
    for start in range(0, num_bootstrap, per_chunk):
        b = min(per_chunk, num_bootstrap - start)
        # int32 draws: torch's CPU randint took 2.7 ns per int32 and 5.9 ns per int64 here
        members = torch.randint(rank.num_in, (b, rank.num_in), generator=g, dtype=torch.int32)
        nonmembers = torch.randint(rank.num_out, (b, rank.num_out), generator=g, dtype=torch.int32)
        parts.append(_replicate_metrics(rank, members, nonmembers, metrics))
    return {m: torch.cat([p[m] for p in parts]) for m in metrics}


def _replicate_metrics(rank: _Ranking, members: Tensor, nonmembers: Tensor, metrics: list[str]) -> dict[str, Tensor]:
    """The metrics of each row's resample: ``members`` [B, N_in] and ``nonmembers`` [B, N_out] hold
    the drawn indices (in descending score order)."""
    b = members.shape[0]
    out, csn, m = {}, None, None
    if "auc" in metrics:
        # Counts and their sums are whole numbers below 2^53: float64 holds them and every sum
        # exactly, whatever the order of addition (so any thread count gives the same result).
        one = torch.ones((), dtype=torch.float64)
        m = torch.zeros(b, rank.num_out + 1, dtype=torch.float64)
        m.scatter_add_(1, rank.lo.index_select(0, members.reshape(-1)).view(b, -1), one.expand(members.shape))
        if rank.ties:
            m.scatter_add_(1, rank.hi.index_select(0, members.reshape(-1)).view(b, -1), one.expand(members.shape))
        wn = torch.zeros(b, rank.num_out, dtype=torch.float64)
        wn.scatter_add_(1, nonmembers.long(), one.expand(nonmembers.shape))
        csn = torch.cumsum(wn, 1)  # csn[:, k - 1] = CSn[k]
        wrong2 = torch.linalg.vecdot(m[:, 1:], csn) * (1 if rank.ties else 2)
        pairs2 = 2 * rank.num_in * rank.num_out
        out["auc"] = (pairs2 - wrong2) / pairs2  # exact integers, one rounding: as roc_metrics
    tpr_metrics = [k for k in metrics if k != "auc"]
    if tpr_metrics:
        limits = torch.tensor([_fp_limit(FPR_LEVELS[k], rank.num_out) for k in tpr_metrics])
        first = _first_above(nonmembers, limits, rank.num_out, csn)  # [B, M]: j*
        if m is not None and not rank.ties:
            # members above s_{j*} are those in slots <= above_out[j*] (their lo = hi): sum the
            # few slots up to the deepest cut instead of comparing all N_in draws per level
            cut = rank.above_out[first]
            tp = torch.gather(torch.cumsum(m[:, :int(cut.max()) + 1], 1), 1, cut)
        else:
            cut = rank.above[first]
            tp = torch.stack([(members < cut[:, k:k + 1]).sum(1) for k in range(len(tpr_metrics))], 1)
        for k, name in enumerate(tpr_metrics):
            out[name] = tp[:, k].to(torch.float64) / rank.num_in
    return out


def _first_above(nonmembers: Tensor, limits: Tensor, num_out: int, csn: Tensor | None) -> Tensor:
    """[B, M]: per row, the first non-member whose inclusive count exceeds each limit (num_out if none).

    Only the first few non-members matter at low FPR: the counts of the first W are built from
    the draws below W (W = L + 8 sqrt(L) + 64 covers the limit L in all but about 1e-15 of the rows;
    a row it does not cover doubles W and starts again, so the result stays exact). Measured here,
    34 replicates at N_out = 30,000: 54 us per replicate against 100 us for all N_out counts.
    """
    if csn is None:
        top = int(limits.max())
        width = min(num_out, top + 1 + math.ceil(8 * math.sqrt(top + 1)) + 64)
        while True:
            csn = _first_counts(nonmembers, width, num_out)
            if width == num_out or bool((csn[:, -1] > top).all()):
                break
            width = min(num_out, 2 * width)
    b = nonmembers.shape[0]
    first = torch.searchsorted(csn, limits.to(csn.dtype).expand(b, -1).contiguous(), right=True)
    return first.clamp(max=num_out)


def _first_counts(nonmembers: Tensor, width: int, num_out: int) -> Tensor:
    """[B, width] int64: inclusive counts of the first 1..width non-members of each row."""
    b = nonmembers.shape[0]
    if width == num_out:
        counts = torch.zeros(b, num_out, dtype=torch.int64)
        counts.scatter_add_(1, nonmembers.long(), torch.ones((), dtype=torch.int64).expand(nonmembers.shape))
    else:
        rows, cols = torch.nonzero(nonmembers < width, as_tuple=True)
        flat = rows * width + nonmembers[rows, cols].long()
        counts = torch.bincount(flat, minlength=b * width).view(b, width)
    return torch.cumsum(counts, 1)


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
