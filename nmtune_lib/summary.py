"""The study's verdicts: aggregate every run of a preset, compute ID/OOD means with confidence intervals over seeds,
and judge each claim of PAPER.md §1 by a rule stated in words.

Every effect is computed *per seed* (a paired comparison: the same seed fixes the pre-training data order and the
head's initialisation across noise ratios and methods), then summarised as the mean over seeds ± the half-width of a
two-sided 95% Student-t interval. A claim is **supported** when the whole interval lies on the claimed side of zero,
**contradicted** when it lies wholly on the other side, and **inconclusive** otherwise (including with one seed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
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

    ID mean: plain mean over ID tasks of their in-domain test accuracy (PAPER.md §4). OOD mean: for each OOD task,
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
                 half * scale if np.isfinite(half) else float("nan"), n)


def judge_claims(transfer: xr.Dataset, spectrum: xr.Dataset, *, probe: str = "lp", centering: str = "column",
                 spectrum_dataset: str | None = None) -> list[Claim]:
    """The claims of PAPER.md §1 → measured effect, 95% CI over seeds, verdict.

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


def claims_table(claims: list[Claim]):
    import pandas as pd

    return pd.DataFrame([asdict(c) for c in claims])[["claim", "effect", "verdict", "rule"]]


def claims_records(claims: list[Claim]) -> list[dict]:
    return [asdict(c) for c in claims]


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
