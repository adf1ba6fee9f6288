"""The study's verdicts: aggregate every run of a preset, compute ID/OOD means with confidence intervals over seeds,
and judge each claim of the paper (docs/paper.md, "Claims") by a rule stated in words.

Every effect is computed *per seed* (a paired comparison: the same seed fixes the pre-training data order and the
head's initialisation across noise ratios and methods), then summarised as the mean over seeds ± the half-width of a
two-sided 95% Student-t interval. A claim is **supported** when the whole interval lies on the claimed side of zero,
**contradicted** when it lies wholly on the other side, and **inconclusive** otherwise (including with one seed).

Claim 4 is judged under each protocol (reference, matched) and split into head capacity and regularisers:
NMTune − LP = (MLP − LP) + (NMTune − MLP) (``decomposition``). ``sensitivity`` gives NMTune − MLP per regulariser
scale and noise ratio; ``robustness`` the verdict of every claim under every setting and protocol; ``stability``
how often a verdict survives a bootstrap over seeds (a proxy for a rerun on another machine).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

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


def load_results(config, name: str) -> xr.Dataset:
    """Combine ``<name>.nc`` of every run of this preset, dataset and noise kind into one Dataset."""
    base = Path(config.run_root) / config.preset / config.dataset
    paths = sorted(base.glob(f"{config.noise_kind}-*/seed*/{name}.nc"))
    if not paths:
        raise FileNotFoundError(f"no {name}.nc under {base}/{config.noise_kind}-*/seed*/; run the sweep first "
                                "(nmtune sweep)")
    return combine_runs(paths)


def id_ood_means(transfer: xr.Dataset, *, include_train_domain: bool = False) -> xr.Dataset:
    """ID mean and OOD mean accuracy (noise_ratio, seed, method).

    ID mean: plain mean over ID tasks of their in-domain test accuracy (docs/paper.md). OOD mean: for each OOD task,
    the mean over its test domains (without the training domain unless ``include_train_domain``), then the mean over
    OOD tasks.
    """
    acc = transfer["accuracy"]
    kind = transfer["task_kind"]
    id_mean = acc.where(kind == "id").mean(["task", "test_domain"], skipna=True)
    ood = acc.where(kind == "ood")
    if not include_train_domain:
        ood = ood.where(transfer["test_domain"] != transfer["train_domain"])
    ood_mean = ood.mean("test_domain", skipna=True).mean("task", skipna=True)
    return xr.Dataset({"id_mean": id_mean, "ood_mean": ood_mean})


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
    zero = id_lp["noise_ratio"].values.min()
    if not np.isclose(zero, 0.0):
        raise ValueError("the claims need the noise-free runs (noise ratio 0) in the grid")
    slight, heavy = _ratios(id_lp, SLIGHT), _ratios(id_lp, HEAVY)
    noisy = [float(r) for r in id_lp["noise_ratio"].values if r > 0]
    out = []
    pts = "points"
    rule_pos = "supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
    rule_neg = "supported if the 95% CI over seeds lies below 0, contradicted if above, else inconclusive"
    if slight:
        gain = (id_lp.sel(noise_ratio=slight).mean("noise_ratio") - id_lp.sel(noise_ratio=zero)).values
        out.append(_claim(f"1a. Slight pre-training noise ({', '.join(f'{r:.0%}' for r in slight)}) improves ID "
                          f"transfer ({probe.upper()} ID mean, noisy − clean)", gain, +1, pts, rule_pos, 100))
    if slight and heavy:
        drop = (id_lp.sel(noise_ratio=heavy).mean("noise_ratio") - id_lp.sel(noise_ratio=slight).mean("noise_ratio")
                ).values
        out.append(_claim(f"1b. More noise ({', '.join(f'{r:.0%}' for r in heavy)}) hurts ID transfer relative to "
                          "slight noise (ID mean, heavy − slight)", drop, -1, pts, rule_neg, 100))
    if noisy:
        ood_drop = (ood_lp.sel(noise_ratio=noisy).mean("noise_ratio") - ood_lp.sel(noise_ratio=zero)).values
        out.append(_claim(f"2a. Any pre-training noise hurts OOD transfer ({probe.upper()} OOD mean over noisy "
                          "ratios − clean)", ood_drop, -1, pts, rule_neg, 100))
        out.append(_claim("2b. More noise hurts OOD more (slope of the OOD mean vs noise ratio, points per 10% noise)",
                          _slope(ood_lp), -1, "points/10%", rule_neg, 10))
    spec = spectrum.sel(centering=centering)
    if "dataset" in spec.dims:
        spec = spec.sel(dataset=spectrum_dataset or str(spec["dataset"].values[0]))
    if noisy:
        def noisy_minus_clean(da: xr.DataArray) -> np.ndarray:
            return (da.sel(noise_ratio=noisy).mean("noise_ratio") - da.sel(noise_ratio=zero)).values

        out.append(_claim(f"3a. Noise flattens the spectrum: higher SVE (mean over noisy ratios − clean; {centering} "
                          "centring)", noisy_minus_clean(spec["sve"]), +1, "nats", rule_pos))
        out.append(_claim(f"3b. Noise lowers the top singular value's share p₁ (mean over noisy ratios − clean; "
                          f"{centering} centring)", noisy_minus_clean(spec["p1"]), -1, "", rule_neg))
        out.append(_claim("3c. … and more so with more noise (slope of SVE vs noise ratio, nats per 10% noise)",
                          _slope(spec["sve"]), +1, "nats/10%", rule_pos, 0.1))
        out.append(_claim("3d. … and more so with more noise (slope of p₁ vs noise ratio, per 10% noise)",
                          _slope(spec["p1"]), -1, "/10%", rule_neg, 0.1))
    methods = list(transfer["method"].values)
    letters = iter("abcd")
    for other in ("lp", "mlp"):
        for which in ("id_mean", "ood_mean"):
            letter = next(letters)
            if "nmtune" not in methods or other not in methods:
                continue
            diff = (means[which].sel({"method": "nmtune"}) - means[which].sel({"method": other})).mean("noise_ratio")
            out.append(_claim(f"4{letter}. NMTune beats {other.upper()} on {which[:-5].upper()} (mean over noise "
                              f"ratios, NMTune − {other.upper()})", diff.values, +1, pts, rule_pos, 100))
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


def decomposition(transfer: xr.Dataset, *, setting: str = "base"):
    """NMTune − LP = (MLP − LP) + (NMTune − MLP), ID and OOD means, per protocol and noise ratio (and ``all``,
    the mean over noise ratios): mean over seeds ± 95% half-width, in points, paired by seed."""
    import pandas as pd

    rows = []
    for protocol in transfer["protocol"].values:
        means = id_ood_means(transfer.sel(setting=setting, protocol=protocol))
        if not np.isfinite(means["id_mean"].sel({"method": "lp"})).any():
            continue
        ratios = [("all", means)] + [(f"{r:g}", means.sel(noise_ratio=[r])) for r in means["noise_ratio"].values]
        for label, part in ratios:
            for which in ("id_mean", "ood_mean"):
                m = {k: part[which].sel({"method": k}) for k in ("lp", "mlp", "nmtune")}
                for term, (a, b) in {"nmtune-lp": ("nmtune", "lp"), "mlp-lp": ("mlp", "lp"),
                                     "nmtune-mlp": ("nmtune", "mlp")}.items():
                    mean, half, n = paired_effect(m[a], m[b])
                    rows.append(dict(protocol=str(protocol), noise_ratio=label, mean_of=which[:-5].upper(),
                                     term=term, mean_points=mean, half_width_points=half, n_seeds=n))
    return pd.DataFrame(rows)


def sensitivity(transfer: xr.Dataset, *, task: str, config) -> "pd.DataFrame":
    """NMTune − MLP (points, mean over seeds ± 95% half-width) on ``task`` for every regulariser scale and the
    single-λ variant, per noise ratio: on the task's training domain (``train_domain``) and its OOD mean (the
    other test domains); ``noise_ratio == "slope/10%"`` rows give the per-seed slope of that difference against
    the noise ratio (points per 10% noise): a positive slope means the regularisers help more as noise grows."""
    import pandas as pd

    from .protocols import sensitivity_name

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
