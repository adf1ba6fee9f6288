"""Verdicts that mean what they say: the test each claim's rule implies, Holm's adjustment over a report set's family
of judged cells, the paper's "at every ratio" form of a claim, robustness counted over the settings that can change
a claim's number, and agreement over seed resamples (docs/paper.md §1a).

The rule. An effect is paired by seed and summarised as its mean ± the half-width h of the two-sided 95 % Student-t
interval over its n seeds; it is **supported** when the interval lies wholly on the claimed side of 0,
**contradicted** when wholly on the other side, else **inconclusive**. That is two one-sided t-tests at 2.5 % each:
with se = h / t₀.₉₇₅(n − 1) and t = sign · mean / se, the claimed direction's p-value is p = P(T ≥ t), T ~ t(n − 1)
(``p_value``), and supported ⟺ p < 0.025, contradicted ⟺ p > 0.975. The decision either way is the two-sided test
p₂ = 2·min(p, 1 − p) < 0.05; Holm's step-down adjustment of the p₂ of every cell in the family (statsmodels'
``multipletests``) gives the **adjusted verdict**: supported or contradicted where the adjusted p₂ stays under 0.05
(on the side the mean lies), else inconclusive.

A claim the paper states "consistently" (at every noise ratio) is judged as an intersection–union test of its
per-ratio cells (``combine_every``): supported only if every ratio's cell is, contradicted if some ratio's cell is,
its p-value the largest of theirs. It is not another hypothesis in the family: its adjusted verdict follows from its
cells' adjusted verdicts.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # two-sided: 0.025 on each side, the 95 % interval's rule
VERDICTS = ("supported", "contradicted", "inconclusive")
NOT_JUDGED = "not judged"  # the grid lacks the noise ratios the claim compares
NOT_APPLICABLE = "not applicable"  # a robustness setting that cannot change the claim's number


def mean_ci(per_seed: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean over seeds and the half-width of the two-sided Student-t interval (NaN half-width for one seed)."""
    x = np.asarray(per_seed, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def verdict(mean: float, half: float, sign: int) -> str:
    """The rule on an interval: ``sign`` = +1 if the claim says the effect is positive, −1 if negative."""
    if not np.isfinite(half) or not np.isfinite(mean):
        return "inconclusive"
    low, high = mean - half, mean + half
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "supported"
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "contradicted"
    return "inconclusive"


def p_value(mean: float, half_width: float, n: int, sign: int, level: float = 0.95) -> float:
    """The claimed direction's one-sided p-value of a one-sample t-test of ``mean`` against 0, from the two-sided
    ``level`` interval's half-width over ``n`` seeds (se = half_width / t_{(1+level)/2}(n − 1)); NaN for n < 2 or a
    missing value; a zero half-width gives 0 or 1 (or ½ for a zero mean)."""
    if n < 2 or not (math.isfinite(mean) and math.isfinite(half_width)):
        return math.nan
    se = half_width / stats.t.ppf(0.5 + level / 2, n - 1)
    if se == 0:
        return 0.5 if mean == 0 else float(sign * mean < 0)
    return float(stats.t.sf(sign * mean / se, n - 1))


def two_sided(p: float) -> float:
    """2·min(p, 1 − p): the p-value of deciding either way (supported or contradicted)."""
    return min(1.0, 2 * min(p, 1 - p)) if math.isfinite(p) else math.nan


def decide(p: float, mean: float, sign: int, alpha: float = ALPHA) -> str:
    """Supported / contradicted / inconclusive from a two-sided p-value (raw or adjusted) and the mean's side."""
    if not (math.isfinite(p) and math.isfinite(mean)) or p >= alpha:
        return "inconclusive"
    return "supported" if sign * mean > 0 else "contradicted"


def holm(p_two_sided: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down adjustment of two-sided p-values (statsmodels' ``multipletests``); NaN stays NaN and is not
    counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_two_sided, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def combine_every(verdicts: Sequence[str], p_values: Sequence[float], unit: str = "ratios") -> tuple[str, float, str]:
    """The "at every …" form of a claim from its cells' verdicts and claimed-direction p-values: (verdict, p-value of
    the intersection–union test = the largest cell p-value, ``"k of m <unit>"`` saying how many cells support it)."""
    m = len(verdicts)
    k = sum(v == "supported" for v in verdicts)
    if m == 0 or any(v == NOT_JUDGED for v in verdicts):
        return NOT_JUDGED, math.nan, ""
    verdict = "supported" if k == m else "contradicted" if "contradicted" in verdicts else "inconclusive"
    p = float(np.max(p_values)) if all(math.isfinite(x) for x in p_values) else math.nan
    against = sum(v == "contradicted" for v in verdicts)
    return verdict, p, f"{k} of {m} {unit}" + (f" ({against} against)" if against else "")


def agreement_over_seed_resamples(per_seed: np.ndarray, signs: Sequence[int], observed: str, *, every: bool = False,
                                  resamples: int = 1000, seed: int = 0) -> float:
    """The share of ``resamples`` resamples of the seeds (with replacement) whose verdict by the rule equals
    ``observed``: how far a verdict rests on one or two seeds. ``per_seed``: cells × seeds paired effects (one row for
    a single cell; ``every``: the cells of an "at every ratio" claim, resampled jointly and combined by
    ``combine_every``). Not a rerun: a resample of n seeds holds at most n distinct values, and another machine's
    kernels change every seed's number (docs/paper.md §1a). NaN for fewer than two seeds."""
    x = np.atleast_2d(np.asarray(per_seed, dtype=float))
    x = x[:, np.isfinite(x).all(axis=0)]
    if x.shape[1] < 2:
        return math.nan
    picks = np.random.default_rng(seed).integers(0, x.shape[1], size=(resamples, x.shape[1]))
    same = 0
    for pick in picks:
        cells = [verdict(*mean_ci(row[pick]), s) for row, s in zip(x, signs)]
        got = combine_every(cells, [math.nan] * len(cells))[0] if every else cells[0]
        same += got == observed
    return same / resamples


# --- which settings can change which claim ----------------------------------------------------------------------

# The config fields each kind of head reads (protocols.head_spec, the view sources, the matched protocol's search).
EVAL_PROBE_FIELDS = frozenset({"head_epochs", "head_batch_size", "head_weight_decay", "lp_lr"})
VIEW_HEAD_FIELDS = EVAL_PROBE_FIELDS | {"views", "head_mode", "view_crop_scale", "view_crop_ratio",
                                        "view_interpolation", "view_blur", "mlp_lr", "w_mse", "w_cov", "w_svd",
                                        "svd_top_k", "svd_driver"}
MATCHED_FIELDS = VIEW_HEAD_FIELDS | {"lr_grid", "holdout_fraction"}
SPECTRUM_FIELDS = frozenset({"centering"})  # claim 3 reads the features' spectrum alone


def fields_read(claim_id: str, protocol: str) -> frozenset[str]:
    """The settings that can change claim ``claim_id``'s number under ``protocol``: claims 1–2 read the protocol's
    linear probe (on eval features in ``reference``, on the views in ``matched``), claim 3 the spectrum of the
    backbone's features (the same under every protocol and head setting), claim 4 every head."""
    family = claim_id[:1]
    if family == "3":
        return SPECTRUM_FIELDS
    if protocol == "matched":
        return MATCHED_FIELDS
    return EVAL_PROBE_FIELDS if family in "12" else VIEW_HEAD_FIELDS


def can_change(claim_id: str, protocol: str, setting: str, base_protocol: str = "reference") -> bool:
    """Whether the robustness cell (``protocol``, ``setting``) can give claim ``claim_id`` another number than the
    base cell (``base_protocol``, base setting): a setting ``KEY=VALUE`` only if the claim reads KEY; another
    protocol only if the claim reads a head (not claim 3)."""
    key = setting.partition("=")[0].strip()
    if setting in ("", "base"):
        return protocol == base_protocol or claim_id[:1] != "3"
    return key in fields_read(claim_id, protocol)


def robust_label(verdicts: Sequence[str]) -> str:
    """``yes`` when the verdicts of the applicable settings agree, ``no`` when they differ, and a sentence instead of
    either when fewer than two settings could have changed the claim."""
    judged = [v for v in verdicts if v != NOT_JUDGED]
    if len(judged) < 2:
        return f"not assessed: {len(judged)} applicable setting{'' if len(judged) == 1 else 's'}"
    return "yes" if len(set(judged)) == 1 else "no"


def adjusted(p_two: Mapping[str, float], means: Mapping[str, float], signs: Mapping[str, int]
             ) -> dict[str, tuple[float, str]]:
    """Holm over the family ``p_two`` (key → two-sided p-value): key → (adjusted p-value, adjusted verdict)."""
    keys = list(p_two)
    p_adj = holm([p_two[k] for k in keys])
    return {k: (float(p), decide(p, means[k], signs[k])) for k, p in zip(keys, p_adj)}
