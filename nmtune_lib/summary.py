"""The study's verdicts: aggregate every run of a preset, compute ID/OOD means with confidence intervals over seeds,
and judge each claim of the paper (docs/paper.md, "Claims") by a rule stated in words.

Every effect is computed *per seed* (a paired comparison: the same seed fixes the pre-training data order and the
head's initialisation across noise ratios and methods), then summarised as the mean over seeds ± the half-width of a
two-sided 95% Student-t interval. A claim is **supported** when the whole interval lies on the claimed side of zero,
**contradicted** when it lies wholly on the other side, and **inconclusive** otherwise (including with one seed).
Every claim is listed: one whose noise ratios the grid lacks (claim 1 without 5 % or 10 %, a slope with one ratio)
is **not judged**, with the reason in its effect.

Claim 4 is judged under each protocol (reference, matched) and split into head capacity and regularisers:
NMTune − LP = (MLP − LP) + (NMTune − MLP) (``decomposition``). ``sensitivity`` gives NMTune − MLP per regulariser
scale and noise ratio; ``robustness`` the verdict of every claim under every setting and protocol; ``stability``
how often a verdict survives a bootstrap over seeds (a proxy for a rerun on another machine).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import xarray as xr
from scipy import stats

from .config import ratio_percent
from .results import combine_runs

SLIGHT = (0.05, 0.10)  # "slight" pre-training noise in the paper's claim 1
HEAVY = (0.20, 0.30)


@dataclass(frozen=True)
class Claim:
    claim: str
    effect: str
    rule: str
    verdict: str
    mean: float
    half_width: float
    n_seeds: int
    sign: int = 1  # the claimed sign of the effect
    per_seed: tuple[float, ...] = ()  # the paired effect of every seed, in the effect's unit
    protocol: str = ""
    setting: str = ""


def load_results(study, kind: str) -> xr.Dataset:
    """Combine the ``kind`` result file (``"transfer"``, ``"spectrum"``) of every run of ``study``'s grid (a
    ``Study``) into one Dataset; only the grid's runs are read, and a run of the grid without the file raises."""
    return combine_runs(study.result_paths(kind), kind)


def task_scores(transfer: xr.Dataset, *, include_train_domain: bool = False) -> xr.DataArray:
    """Each task's score (…, task): an ID task's in-domain test accuracy; an OOD task's mean over its test domains
    (without the training domain unless ``include_train_domain``). ``id_ood_means`` averages these over tasks."""
    acc = transfer["accuracy"]
    if not include_train_domain:
        acc = acc.where((transfer["task_kind"] == "id") | (transfer["test_domain"] != transfer["train_domain"]))
    return acc.mean("test_domain", skipna=True)


def id_ood_means(transfer: xr.Dataset, *, include_train_domain: bool = False) -> xr.Dataset:
    """ID mean and OOD mean accuracy (noise_ratio, seed, method).

    ID mean: plain mean over ID tasks of their in-domain test accuracy (docs/paper.md). OOD mean: for each OOD task,
    the mean over its test domains (without the training domain unless ``include_train_domain``), then the mean over
    OOD tasks. Both are means of ``task_scores``.
    """
    scores = task_scores(transfer, include_train_domain=include_train_domain)
    kind = transfer["task_kind"]
    return xr.Dataset({"id_mean": scores.where(kind == "id").mean("task", skipna=True),
                       "ood_mean": scores.where(kind == "ood").mean("task", skipna=True)})


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
    """``sign`` = +1 if the claim says the effect is positive, −1 if negative."""
    if not np.isfinite(half) or not np.isfinite(mean):
        return "inconclusive"
    low, high = mean - half, mean + half
    if (sign > 0 and low > 0) or (sign < 0 and high < 0):
        return "supported"
    if (sign > 0 and high < 0) or (sign < 0 and low > 0):
        return "contradicted"
    return "inconclusive"


def _slope(values: xr.DataArray) -> np.ndarray:
    """Least-squares slope of ``values`` against noise_ratio, one per seed (units: per unit noise ratio)."""
    x = values["noise_ratio"].values
    y = values.transpose("seed", "noise_ratio").values
    xc = x - x.mean()
    return (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)


def _ratios(da: xr.DataArray, wanted) -> list[float]:
    have = da["noise_ratio"].values
    return [float(r) for r in have if any(np.isclose(r, w) for w in wanted)]


def _clean_ratio(ratios: list[float]) -> float | None:
    """The grid's 0 (clean pre-training) as it is stored, or None when the grid has no clean run."""
    return next((r for r in ratios if np.isclose(r, 0.0)), None)


def _claim(text: str, per_seed: np.ndarray, sign: int, unit: str, rule: str, scale: float = 1.0) -> Claim:
    mean, half = mean_ci(per_seed)
    effect = f"{mean * scale:+.3g} ± {half * scale:.2g} {unit}" if np.isfinite(half) else f"{mean * scale:+.3g} {unit}"
    n = int(np.isfinite(np.asarray(per_seed, dtype=float)).sum())
    return Claim(text, f"{effect} (n={n} seeds)", rule, verdict(mean, half, sign), mean * scale,
                 half * scale if np.isfinite(half) else float("nan"), n, sign,
                 tuple(float(v) * scale for v in np.asarray(per_seed, dtype=float)))


def judge_claims(transfer: xr.Dataset, spectrum: xr.Dataset, *, probe: str = "lp", centering: str = "column",
                 spectrum_dataset: str | None = None) -> list[Claim]:
    """The claims of docs/paper.md → measured effect, 95% CI over seeds, verdict.

    Claims 1–3 concern the pre-trained features, read through the linear probe ``probe`` (the paper's evaluation of
    the noisy backbones) and the feature spectrum with the given ``centering``; claim 4 compares the heads averaged
    over all noise ratios.
    """
    means = id_ood_means(transfer)
    id_lp, ood_lp = means["id_mean"].sel({"method": probe}), means["ood_mean"].sel({"method": probe})
    ratios = [float(r) for r in id_lp["noise_ratio"].values]
    grid = _Grid(zero=_clean_ratio(ratios), slight=_ratios(id_lp, SLIGHT),
                 heavy=_ratios(id_lp, HEAVY), noisy=[r for r in ratios if r > 0])
    spec = spectrum.sel(centering=centering)
    if "dataset" in spec.dims:
        spec = spec.sel(dataset=spectrum_dataset or str(spec["dataset"].values[0]))
    return [*_transfer_claims(grid, id_lp, ood_lp, probe), *_spectrum_claims(grid, spec, centering),
            *_nmtune_claims(means, list(transfer["method"].values))]


RULE_POS = "supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
RULE_NEG = "supported if the 95% CI over seeds lies below 0, contradicted if above, else inconclusive"
NOT_JUDGED = "not judged"  # the grid lacks the noise ratios the claim compares


@dataclass(frozen=True)
class _Grid:
    """The noise ratios a claim can compare: 0 (None if absent), slight, heavy and every ratio > 0."""

    zero: float | None
    slight: list[float]
    heavy: list[float]
    noisy: list[float]


def _unjudged(text: str, sign: int, why: str) -> Claim:
    """A claim the grid cannot judge, listed with the reason instead of left out."""
    return Claim(text, f"not judged: the grid lacks {why}", RULE_POS if sign > 0 else RULE_NEG, NOT_JUDGED,
                 float("nan"), float("nan"), 0, sign)


def _pct(ratios) -> str:
    return ", ".join(ratio_percent(r) for r in ratios)


def _transfer_claims(g: _Grid, id_lp: xr.DataArray, ood_lp: xr.DataArray, probe: str) -> list[Claim]:
    """Claims 1 (ID) and 2 (OOD) on the probe's ID and OOD means."""
    def at(da, ratios):
        return da.sel(noise_ratio=ratios).mean("noise_ratio")

    text_1a = f"1a. Slight pre-training noise improves ID transfer ({probe.upper()} ID mean, noisy − clean)"
    text_1b = "1b. More noise hurts ID transfer relative to slight noise (ID mean, heavy − slight)"
    text_2a = f"2a. Any pre-training noise hurts OOD transfer ({probe.upper()} OOD mean over noisy ratios − clean)"
    text_2b = "2b. More noise hurts OOD more (slope of the OOD mean vs noise ratio, points per 10% noise)"
    out = []
    if g.zero is not None and g.slight:
        out.append(_claim(text_1a.replace("noise improves", f"noise ({_pct(g.slight)}) improves"),
                          (at(id_lp, g.slight) - id_lp.sel(noise_ratio=g.zero)).values, +1, "points", RULE_POS, 100))
    else:
        out.append(_unjudged(text_1a, +1, f"noise ratio 0 and a slight one ({_pct(SLIGHT)})"))
    if g.slight and g.heavy:
        out.append(_claim(text_1b.replace("More noise", f"More noise ({_pct(g.heavy)})"),
                          (at(id_lp, g.heavy) - at(id_lp, g.slight)).values, -1, "points", RULE_NEG, 100))
    else:
        out.append(_unjudged(text_1b, -1, f"a slight ({_pct(SLIGHT)}) and a heavy ({_pct(HEAVY)}) noise ratio"))
    if g.zero is not None and g.noisy:
        out.append(_claim(text_2a, (at(ood_lp, g.noisy) - ood_lp.sel(noise_ratio=g.zero)).values, -1, "points",
                          RULE_NEG, 100))
    else:
        out.append(_unjudged(text_2a, -1, "noise ratio 0 and a noise ratio > 0"))
    if len(g.noisy) + (g.zero is not None) >= 2:
        out.append(_claim(text_2b, _slope(ood_lp), -1, "points/10%", RULE_NEG, 10))
    else:
        out.append(_unjudged(text_2b, -1, "two noise ratios (a slope needs two)"))
    return out


def _spectrum_claims(g: _Grid, spec: xr.Dataset, centering: str) -> list[Claim]:
    """Claims 3a-3d on the spectrum of the pre-trained features."""
    texts = [(f"3a. Noise flattens the spectrum: higher SVE (mean over noisy ratios − clean; {centering} centring)",
              "sve", +1, "nats"),
             (f"3b. Noise lowers the top singular value's share p₁ (mean over noisy ratios − clean; {centering} "
              "centring)", "p1", -1, "")]
    slopes = [("3c. … and more so with more noise (slope of SVE vs noise ratio, nats per 10% noise)", "sve", +1,
               "nats/10%"),
              ("3d. … and more so with more noise (slope of p₁ vs noise ratio, per 10% noise)", "p1", -1, "/10%")]
    out = []
    for text, metric, sign, unit in texts:
        if g.zero is not None and g.noisy:
            effect = (spec[metric].sel(noise_ratio=g.noisy).mean("noise_ratio") - spec[metric].sel(noise_ratio=g.zero))
            out.append(_claim(text, effect.values, sign, unit, RULE_POS if sign > 0 else RULE_NEG))
        else:
            out.append(_unjudged(text, sign, "noise ratio 0 and a noise ratio > 0"))
    for text, metric, sign, unit in slopes:
        if spec.sizes["noise_ratio"] >= 2:
            out.append(_claim(text, _slope(spec[metric]), sign, unit, RULE_POS if sign > 0 else RULE_NEG, 0.1))
        else:
            out.append(_unjudged(text, sign, "two noise ratios (a slope needs two)"))
    return out


def _nmtune_claims(means: xr.Dataset, methods: list[str]) -> list[Claim]:
    """Claims 4a-4d: NMTune against LP and MLP on the ID and OOD means, averaged over the noise ratios."""
    out = []
    letters = iter("abcd")
    for other in ("lp", "mlp"):
        for which in ("id_mean", "ood_mean"):
            letter = next(letters)
            if "nmtune" not in methods or other not in methods:
                continue
            diff = (means[which].sel({"method": "nmtune"}) - means[which].sel({"method": other})).mean("noise_ratio")
            out.append(_claim(f"4{letter}. NMTune beats {other.upper()} on {which[:-5].upper()} (mean over noise "
                              f"ratios, NMTune − {other.upper()})", diff.values, +1, "points", RULE_POS, 100))
    return out


def claim_id(claim: Claim) -> str:
    """``"4a"`` of ``"4a. NMTune beats …"``."""
    return claim.claim.split(".")[0]


def judge_all(transfer: xr.Dataset, spectrum: xr.Dataset, **kwargs) -> list[Claim]:
    """``judge_claims`` under every (setting, protocol) that holds results, each Claim tagged with both."""
    out = []
    for setting in transfer["setting"].values:
        for protocol in transfer["protocol"].values:
            part = transfer.sel(setting=setting, protocol=protocol)
            if not np.isfinite(part["accuracy"].sel({"method": "lp"})).any():
                continue  # e.g. the matched protocol under a robustness setting: not run
            out += [replace(c, setting=str(setting), protocol=str(protocol))
                    for c in judge_claims(part, spectrum, **kwargs)]
    return out


def claims_table(claims: list[Claim]):
    import pandas as pd

    frame = pd.DataFrame([asdict(c) for c in claims])
    return frame[["protocol", "claim", "effect", "verdict", "rule"]] if claims else frame


def claims_records(claims: list[Claim]) -> list[dict]:
    return [asdict(c) for c in claims]


def claims_document(claims: list[Claim], study) -> dict:
    """``claims.json``: the claims, the grid they cover (``noise_ratios``, ``seeds``) and the sha256 of every result
    file read (named relative to the study folder), so that a stale or partial summary can be told from a fresh one."""
    from .markers import digests

    inputs, _ = study.summary_files()
    return {"grid": {"noise_ratios": list(study.config.noise_ratios), "seeds": list(study.config.seeds)},
            "inputs": digests(inputs), "claims": claims_records(claims)}


def robustness_table(claims: list[Claim]):
    """claim × setting → verdict (setting = "<protocol>" or "<protocol>, <robustness setting>"), and whether every
    setting agrees (``robust``)."""
    import pandas as pd

    rows = [dict(claim=claim_id(c), setting=c.protocol + ("" if c.setting == "base" else f", {c.setting}"),
                 verdict=c.verdict, effect=c.effect) for c in claims]
    frame = pd.DataFrame(rows)
    agree = frame.groupby("claim")["verdict"].agg(lambda v: v.nunique() == 1)
    return frame.assign(robust=frame["claim"].map(agree))


def stability(claims: list[Claim], *, resamples: int = 1000, seed: int = 0):
    """How often each verdict survives a bootstrap over seeds: the seeds' paired effects are resampled with
    replacement ``resamples`` times and judged by the same rule; ``agreement`` is the share of resamples whose
    verdict equals the one on all seeds. A proxy for a rerun on another machine, where CPU kernels differ."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for c in claims:
        x = np.asarray(c.per_seed, dtype=float)
        x = x[np.isfinite(x)]
        if len(x) < 2:
            rows.append(dict(protocol=c.protocol, setting=c.setting, claim=claim_id(c), verdict=c.verdict,
                             agreement=float("nan")))
            continue
        draws = x[rng.integers(0, len(x), size=(resamples, len(x)))]
        same = [verdict(*mean_ci(d), c.sign) == c.verdict for d in draws]
        rows.append(dict(protocol=c.protocol, setting=c.setting, claim=claim_id(c), verdict=c.verdict,
                         agreement=float(np.mean(same))))
    return pd.DataFrame(rows)


def paired_effect(a: xr.DataArray, b: xr.DataArray) -> tuple[float, float, int]:
    """Mean and 95% half-width (points) of a − b over seeds, after averaging over the noise ratios present."""
    diff = (a - b) * 100
    diff = diff.mean("noise_ratio") if "noise_ratio" in diff.dims else diff
    values = diff.values
    mean, half = mean_ci(values)
    return mean, half, int(np.isfinite(values).sum())


DECOMPOSED = ("lp", "mlp", "nmtune")  # the heads claim 4's decomposition compares


def decomposition(transfer: xr.Dataset, *, setting: str = "base"):
    """NMTune − LP = (MLP − LP) + (NMTune − MLP), ID and OOD means, per protocol and noise ratio (and ``all``,
    the mean over noise ratios): mean over seeds ± 95% half-width, in points, paired by seed. Empty when the runs
    lack one of the three heads (``methods``)."""
    import pandas as pd

    rows = []
    heads_run = set(DECOMPOSED) <= set(transfer["method"].values)
    for protocol in transfer["protocol"].values if heads_run else ():
        means = id_ood_means(transfer.sel(setting=setting, protocol=protocol))
        ratios = [("all", means)] + [(f"{r:g}", means.sel(noise_ratio=[r])) for r in means["noise_ratio"].values]
        for label, part in ratios:
            for which in ("id_mean", "ood_mean"):
                if not np.isfinite(means[which].sel({"method": "lp"})).any():
                    continue  # a suite without ID (or OOD) tasks, or a protocol without LP
                m = {k: part[which].sel({"method": k}) for k in DECOMPOSED}
                for term, (a, b) in {"nmtune-lp": ("nmtune", "lp"), "mlp-lp": ("mlp", "lp"),
                                     "nmtune-mlp": ("nmtune", "mlp")}.items():
                    mean, half, n = paired_effect(m[a], m[b])
                    rows.append(dict(protocol=str(protocol), noise_ratio=label, mean_of=which[:-5].upper(),
                                     term=term, mean_points=mean, half_width_points=half, n_seeds=n))
    return pd.DataFrame(rows, columns=["protocol", "noise_ratio", "mean_of", "term", "mean_points",
                                       "half_width_points", "n_seeds"])


EFFECTS_BY = ("mean", "task")  # noise_effects' and score_levels' rows: per ID/OOD mean, or per task


def _probe_scores(transfer: xr.Dataset, *, probe: str, setting: str, by: str):
    """For each protocol, ``(protocol, labels, scores)``: ``probe``'s ID and OOD means (``by="mean"``, labels
    ``mean_of``) or each task's score (``by="task"``, labels ``mean_of`` and ``task``), each (noise_ratio, seed);
    a group without finite scores (a suite without ID or OOD tasks, a protocol not run) is left out."""
    if by not in EFFECTS_BY:
        raise ValueError(f"by={by!r}; accepted: {', '.join(map(repr, EFFECTS_BY))}")
    for protocol in transfer["protocol"].values:
        part = transfer.sel(setting=setting, protocol=protocol)
        if by == "mean":
            means = id_ood_means(part).sel({"method": probe})
            groups = [({"mean_of": which[:-5].upper()}, means[which]) for which in ("id_mean", "ood_mean")]
        else:
            scores = task_scores(part).sel({"method": probe})
            groups = [({"mean_of": str(kind).upper(), "task": str(task)}, scores.sel(task=task))
                      for task, kind in zip(part["task"].values, part["task_kind"].values)]
        for labels, values in groups:
            if np.isfinite(values).any():
                yield str(protocol), labels, values


def _by_columns(by: str) -> list[str]:
    return ["protocol", "mean_of", *(["task"] if by == "task" else []), "noise_ratio"]


def noise_effects(transfer: xr.Dataset, *, probe: str = "lp", setting: str = "base", by: str = "mean"):
    """Claims 1a and 2a one noise ratio at a time (docs/paper.md §7 asks whether an optimal ratio exists): per
    protocol, test domain (ID mean, OOD mean) and noise ratio > 0, ``probe``'s accuracy minus that of the clean (0 %)
    pre-training of the same seed, mean over seeds ± 95% half-width, in points; ``ci`` says on which side of zero
    the interval lies (``spans 0`` when on neither). Empty when the grid has no clean run.

    ``by="task"``: the same comparison for each task's own score (``task_scores``) instead of the two means, with a
    ``task`` column after ``mean_of`` (the mean the task enters): which tasks carry a mean's effect and its spread.
    """
    import pandas as pd

    rows = []
    ratios = [float(r) for r in transfer["noise_ratio"].values]
    zero = _clean_ratio(ratios)
    for protocol, labels, values in _probe_scores(transfer, probe=probe, setting=setting, by=by):
        for r in ratios if zero is not None else ():  # no clean run: nothing to compare with
            if r == zero:
                continue
            mean, half, n = paired_effect(values.sel(noise_ratio=r), values.sel(noise_ratio=zero))
            side = {"supported": "above 0", "contradicted": "below 0"}.get(verdict(mean, half, +1), "spans 0")
            rows.append(dict(protocol=protocol, **labels, noise_ratio=f"{r:g}", mean_points=mean,
                             half_width_points=half, n_seeds=n, ci=side))
    return pd.DataFrame(rows, columns=[*_by_columns(by), "mean_points", "half_width_points", "n_seeds", "ci"])


def score_levels(transfer: xr.Dataset, *, methods: Sequence[str] = ("lp",), setting: str = "base",
                 by: str = "task"):
    """The levels ``noise_effects`` takes differences of (the linear probe's), and the same for the other heads in
    ``methods``: per method, protocol, task (or ID/OOD mean, ``by="mean"``) and noise ratio, the score, mean over
    seeds ± 95% half-width, in percent, then each seed's score (columns ``seed0``, ``seed1``, …). Two sets made
    alike but for one setting (``make caption-probe``) compare here at every ratio, 0 % included, and seed by seed
    (``report_tables.contrast_table``). A method the runs lack has no rows."""
    import pandas as pd

    rows = []
    seeds = [f"seed{int(s)}" for s in transfer["seed"].values]
    for method in (m for m in methods if m in transfer["method"].values):
        for protocol, labels, values in _probe_scores(transfer, probe=method, setting=setting, by=by):
            for r in values["noise_ratio"].values:
                per_seed = values.sel(noise_ratio=r).transpose("seed").values * 100
                mean, half = mean_ci(per_seed)
                rows.append(dict(protocol=protocol, method=method, **labels, noise_ratio=f"{float(r):g}",
                                 mean_percent=mean, half_width_percent=half,
                                 n_seeds=int(np.isfinite(per_seed).sum()), **dict(zip(seeds, per_seed))))
    columns = ["protocol", "method", *_by_columns(by)[1:], "mean_percent", "half_width_percent", "n_seeds", *seeds]
    return pd.DataFrame(rows, columns=columns)


def effect_text(frame) -> list[str]:
    """``"+1.23 ± 0.45"`` for each row's ``mean_points`` and ``half_width_points`` (the tables' effect column)."""
    return [interval_text(m, h) for m, h in zip(frame["mean_points"], frame["half_width_points"])]


def interval_text(mean: float, half: float) -> str:
    """``"+1.23 ± 0.45"``: a signed mean and its half-width, two decimals; ``"+1.23 (one seed)"`` where there is no
    half-width (``mean_ci`` of one seed) and ``"n/a"`` where there is no value at all."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:+.2f} ± {half:.2f}" if np.isfinite(half) else f"{mean:+.2f} (one seed)"


def sensitivity(transfer: xr.Dataset, *, task: str, config) -> "pd.DataFrame":
    """NMTune − MLP (points, mean over seeds ± 95% half-width) on ``task`` for every regulariser scale and the
    single-λ variant, per noise ratio: on the task's training domain (``train_domain``) and its OOD mean (the
    other test domains); ``noise_ratio == "slope/10%"`` rows give the per-seed slope of that difference against
    the noise ratio (points per 10% noise): a positive slope means the regularisers help more as noise grows.
    Empty when the runs have no sensitivity heads (ablation off, or ``task`` not among their tasks)."""
    import pandas as pd

    from .protocols import sensitivity_name

    if task not in transfer["task"].values:
        return pd.DataFrame([])
    acc = transfer["accuracy"].sel(setting="base", protocol="reference", task=task)
    train = str(transfer["train_domain"].sel(task=task).values)
    parts = {"train_domain": acc.sel(test_domain=train),
             "ood_mean": acc.drop_sel(test_domain=train).mean("test_domain", skipna=True)}
    variants = [(sensitivity_name(s), s, "") for s in config.reg_scales]
    if config.single_lambda > 0:
        variants.append((f"nmtune_single{config.single_lambda:g}", float("nan"), f"{config.single_lambda:g}"))
    rows = []
    for name, scale, lam in variants:
        if name not in acc["method"].values:
            continue
        for metric, values in parts.items():
            diff = values.sel({"method": name}) - values.sel({"method": "mlp"})
            if not np.isfinite(diff).any():
                continue
            for r in diff["noise_ratio"].values:
                mean, half = mean_ci(diff.sel(noise_ratio=r).values * 100)
                rows.append(dict(variant=name, reg_scale=scale, single_lambda=lam, metric=metric,
                                 noise_ratio=f"{r:g}", mean_points=mean, half_width_points=half,
                                 n_seeds=int(np.isfinite(diff.sel(noise_ratio=r).values).sum())))
            if diff.sizes["noise_ratio"] > 1:
                mean, half = mean_ci(_slope(diff) * 10)
                rows.append(dict(variant=name, reg_scale=scale, single_lambda=lam, metric=metric,
                                 noise_ratio="slope/10%", mean_points=mean, half_width_points=half,
                                 n_seeds=diff.sizes["seed"]))
    return pd.DataFrame(rows)


def ablation_table(transfer: xr.Dataset, *, task: str, mean_over: Sequence[str] = ()) -> "pd.DataFrame | None":
    """Accuracy (%) of every head but the linear probe on the ablation ``task`` (base setting, reference protocol):
    a row per head, a column per test domain, averaged over ``mean_over`` (e.g. ``("seed", "noise_ratio")``; the
    dimensions left must be method and test domain). None when the runs trained no such head on ``task`` (the task
    is not among their tasks, or ``methods`` is the linear probe alone)."""
    if task not in transfer["task"].values:
        return None
    acc = transfer["accuracy"].sel(setting="base", protocol="reference", task=task)
    heads = [m for m in acc["method"].values if m != "lp" and bool(acc.sel({"method": m}).notnull().any())]
    if not heads:
        return None
    return (acc.sel({"method": heads}).mean(list(mean_over)).to_pandas() * 100).dropna(axis=1, how="all")


def means_table(transfer: xr.Dataset) -> pd.DataFrame:
    """ID mean and OOD mean (with and without the training domain) per method and noise ratio, mean over seeds, %."""
    import pandas as pd

    rows = []
    for include in (False, True):
        means = id_ood_means(transfer, include_train_domain=include).mean("seed") * 100
        for var in ("id_mean", "ood_mean"):
            if var == "id_mean" and include:
                continue
            name = {"id_mean": "ID mean", "ood_mean": "OOD mean" + (" (with train domain)" if include else "")}[var]
            frame = means[var].to_pandas()
            frame = frame.T if frame.index.name != "method" else frame
            rows.append(frame.assign(metric=name).set_index("metric", append=True))
    return pd.concat(rows).round(2)
