"""The paper's claims as measured: each claim judged in the form the paper states it, with its p-value and its verdict
adjusted over the report set (docs/paper.md §1, §1a; the statistics in ``verdicts``).

Every effect is computed *per seed* (a paired comparison: the same seed fixes the pre-training data order and the
head's initialisation across noise ratios and methods), then summarised as the mean over seeds ± the half-width of a
two-sided 95% Student-t interval and judged by the rule of ``verdicts``. A row's ``form`` says what it is:

- ``paper``: the claim as the paper states it. Claims 1a ("slight noise improves ID transfer") and 2a ("noise
  consistently hurts OOD transfer") hold at *every* ratio they name, so their row combines one cell per ratio;
- ``component``: one noise ratio of such a claim (``1a@5%``, ``2a@20%``);
- ``secondary``: an average over ratios that the paper does not state (``1a-mean``, ``2a-mean``), kept beside it;
- ``extension``: the study's own claim, not the paper's (3c, 3d: "more so with more noise").

Claim 3 is judged on the pre-training test split (3a–3d) and on the downstream tasks' frozen features (``3a-ID``,
``3a-OOD``, ``3b-ID``, ``3b-OOD``; where the runs hold them). A claim whose noise ratios the grid lacks is listed as
**not judged**, with the reason in its effect. ``judge_all`` judges every (setting, protocol) and every centring of
claim 3, then ``adjust`` adds each row's Holm-adjusted verdict; ``robustness_table`` and ``resample_agreement``
tabulate them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import xarray as xr

from ..config import CENTERINGS, ratio_percent
from ..markers import digests
from .aggregate import clean_ratio, downstream_spectrum, id_ood_means, slope
from .verdicts import (NOT_APPLICABLE, NOT_JUDGED, adjusted, agreement_over_seed_resamples, can_change, combine_every,
                       mean_ci, p_value, robust_label, two_sided, verdict)

SLIGHT = (0.05, 0.10)  # "slight" pre-training noise in the paper's claim 1
HEAVY = (0.20, 0.30)
FORMS = {"paper": "the claim as the paper states it",
         "component": "one noise ratio of a claim the paper states at every ratio",
         "secondary": "an average over ratios that the paper does not state, kept beside it",
         "extension": "the study's own extension, not the paper's claim"}
RULE_POS = "supported if the 95% CI over seeds lies above 0, contradicted if below, else inconclusive"
RULE_NEG = "supported if the 95% CI over seeds lies below 0, contradicted if above, else inconclusive"
RULE_EVERY = "supported if supported at every ratio, contradicted if contradicted at one, else inconclusive"
BASE = "base"


@dataclass(frozen=True)
class Claim:
    """One judged cell: a claim (``id``, ``claim`` text, ``form``) under one protocol and setting."""

    id: str
    claim: str
    form: str
    effect: str
    rule: str
    verdict: str
    mean: float
    half_width: float
    n_seeds: int
    sign: int = 1  # the claimed sign of the effect
    per_seed: tuple[float, ...] = ()  # the paired effect of every seed, in the effect's unit
    protocol: str = ""
    setting: str = BASE
    p_value: float = math.nan  # one-sided, the claimed direction
    parts: tuple[str, ...] = ()  # the ids of the cells an "at every ratio" row combines
    support: str = ""  # "k of m ratios" (rows with parts)
    p_adjusted: float = math.nan  # Holm-adjusted two-sided p-value over the set's family
    verdict_adjusted: str = ""
    support_adjusted: str = ""  # "k of m ratios" after adjustment (rows with parts)
    family_size: int = 0


def claim_id(claim: Claim) -> str:
    return claim.id


def claim_order(cid: str) -> tuple:
    """Sort key of claim ids: by claim (1a, 1b, …), then the paper's row, its per-ratio cells (by ratio), its
    average, its downstream variants: 2a, 2a@5%, 2a@10%, 2a-mean; 3a, 3a-ID, 3a-OOD."""
    base, rest = cid[:2], cid[2:]
    if rest.startswith("@"):
        return base, 1, float(rest[1:].rstrip("%")), rest
    return base, {"": 0, "-mean": 2, "-ID": 3, "-OOD": 4}.get(rest, 5), 0.0, rest


def make_claim(cid: str, text: str, form: str, per_seed, sign: int, unit: str, scale: float = 1.0) -> Claim:
    """A cell judged from its per-seed paired effects (``scale`` converts them to ``unit``)."""
    per_seed = np.asarray(per_seed, dtype=float) * scale
    mean, half = mean_ci(per_seed)
    n = int(np.isfinite(per_seed).sum())
    return from_interval(cid, text, form, mean, half, n, sign, unit, per_seed=tuple(float(v) for v in per_seed))


def from_interval(cid: str, text: str, form: str, mean: float, half: float, n: int, sign: int, unit: str,
                  **fields) -> Claim:
    """A cell judged from its mean, 95 % half-width and number of seeds (also how committed tables are re-judged)."""
    effect = f"{mean:+.3g} ± {half:.2g} {unit}" if np.isfinite(half) else f"{mean:+.3g} {unit}"
    return Claim(cid, f"{cid}. {text}", form, f"{effect.rstrip()} (n={n} seeds)", RULE_POS if sign > 0 else RULE_NEG,
                 verdict(mean, half, sign), mean, half if np.isfinite(half) else math.nan, n, sign,
                 p_value=p_value(mean, half, n, sign), **fields)


def unjudged(cid: str, text: str, form: str, sign: int, why: str) -> Claim:
    """A claim the grid cannot judge, listed with the reason instead of left out."""
    return Claim(cid, f"{cid}. {text}", form, f"not judged: the grid lacks {why}", RULE_POS if sign > 0 else RULE_NEG,
                 NOT_JUDGED, math.nan, math.nan, 0, sign)


def every(cid: str, text: str, cells: Sequence[Claim], sign: int) -> Claim:
    """The "at every ratio" form of a claim from its per-ratio cells (``verdicts.combine_every``)."""
    v, p, support = combine_every([c.verdict for c in cells], [c.p_value for c in cells])
    if v == NOT_JUDGED:
        return unjudged(cid, text, "paper", sign, "the ratios the claim names")
    effect = f"{support}: " + "; ".join(f"{c.id.partition('@')[2]} {c.effect.partition(' (n=')[0]}" for c in cells)
    return Claim(cid, f"{cid}. {text}", "paper", effect, RULE_EVERY, v, math.nan, math.nan,
                 min(c.n_seeds for c in cells), sign, p_value=p, parts=tuple(c.id for c in cells), support=support)


@dataclass(frozen=True)
class _Grid:
    """The noise ratios a claim can compare: 0 (None if absent), slight, heavy and every ratio > 0."""

    zero: float | None
    slight: list[float]
    heavy: list[float]
    noisy: list[float]

    @classmethod
    def of(cls, ratios: Sequence[float]) -> "_Grid":
        ratios = [float(r) for r in ratios]
        pick = lambda wanted: [r for r in ratios if any(np.isclose(r, w) for w in wanted)]  # noqa: E731
        return cls(clean_ratio(ratios), pick(SLIGHT), pick(HEAVY),
                   [r for r in ratios if r > 0])


def _pct(ratios) -> str:
    return ", ".join(ratio_percent(r) for r in ratios)


def _at(da: xr.DataArray, ratios) -> xr.DataArray:
    return da.sel(noise_ratio=ratios).mean("noise_ratio")


TEXT_1A = "Slight pre-training noise improves ID transfer {which} ({probe} ID mean, {how})"
TEXT_2A = "Pre-training noise hurts OOD transfer {which} ({probe} OOD mean, {how})"


def ratio_texts(cid: str, template: str, ratios: Sequence[float], probe: str = "lp") -> dict[str, tuple[str, str]]:
    """id → (text, form) of a claim stated at every ratio of ``ratios``: its ``paper`` row, a ``component`` per
    ratio and the ``secondary`` average (``template`` has the fields ``which``, ``how`` and ``probe``)."""
    text = lambda which, how: template.format(which=which, how=how, probe=probe.upper())  # noqa: E731
    every_ratio = f"at every ratio ({_pct(ratios)})" if ratios else "at every noisy ratio"
    return {cid: (text(every_ratio, "each ratio − clean"), "paper"),
            **{f"{cid}@{ratio_percent(r)}": (text(f"at {ratio_percent(r)} noise", f"{ratio_percent(r)} − clean"),
                                             "component") for r in ratios},
            f"{cid}-mean": (text(f"on average over {_pct(ratios) or 'the noisy ratios'}", "their mean − clean"),
                            "secondary")}


def per_ratio_claims(cid: str, template: str, values: xr.DataArray, g: _Grid, ratios: list[float], sign: int,
                     unit: str, scale: float, probe: str) -> list[Claim]:
    """A claim stated at every ratio of ``ratios``: one ``component`` cell per ratio (each ratio − clean, paired by
    seed), the ``paper`` row combining them, and the ``secondary`` average of the ratios − clean."""
    texts = ratio_texts(cid, template, ratios or (SLIGHT if cid == "1a" else ()), probe)
    if g.zero is None or not ratios:
        why = f"noise ratio 0 and {'a slight one (' + _pct(SLIGHT) + ')' if cid == '1a' else 'a noise ratio > 0'}"
        return [unjudged(i, text, form, sign, why) for i, (text, form) in texts.items()]
    clean = values.sel(noise_ratio=g.zero)
    cells = [make_claim(f"{cid}@{ratio_percent(r)}", *texts[f"{cid}@{ratio_percent(r)}"],
                        (values.sel(noise_ratio=r) - clean).values, sign, unit, scale) for r in ratios]
    mean = make_claim(f"{cid}-mean", *texts[f"{cid}-mean"], (_at(values, ratios) - clean).values, sign, unit, scale)
    return [every(cid, texts[cid][0], cells, sign), *cells, mean]


def _transfer_claims(g: _Grid, id_lp: xr.DataArray, ood_lp: xr.DataArray, probe: str) -> list[Claim]:
    """Claims 1 (ID) and 2 (OOD) on the probe's ID and OOD means."""
    out = per_ratio_claims("1a", TEXT_1A, id_lp, g, g.slight, +1, "points", 100, probe)
    text_1b = (f"More noise ({_pct(g.heavy or HEAVY)}) hurts ID transfer relative to slight noise (ID mean, "
               "heavy − slight)")
    out.append(make_claim("1b", text_1b, "paper", (_at(id_lp, g.heavy) - _at(id_lp, g.slight)).values, -1, "points",
                          100) if g.slight and g.heavy else
               unjudged("1b", text_1b, "paper", -1,
                        f"a slight ({_pct(SLIGHT)}) and a heavy ({_pct(HEAVY)}) noise ratio"))
    out += per_ratio_claims("2a", TEXT_2A, ood_lp, g, g.noisy, -1, "points", 100, probe)
    text_2b = "More noise hurts OOD more (slope of the OOD mean vs noise ratio, points per 10% noise)"
    out.append(make_claim("2b", text_2b, "paper", slope(ood_lp), -1, "points/10%", 10)
               if len(g.noisy) + (g.zero is not None) >= 2 else
               unjudged("2b", text_2b, "paper", -1, "two noise ratios (a slope needs two)"))
    return out


SPECTRUM_CLAIMS = (("3a", "Noise flattens the spectrum: higher SVE", "sve", +1, "nats"),
                   ("3b", "Noise lowers the top singular value's share p₁", "p1", -1, ""))
SPECTRUM_SLOPES = (("3c", "(the study's extension) More noise flattens it more (slope of SVE vs noise ratio, nats "
                          "per 10% noise", "sve", +1, "nats/10%"),
                   ("3d", "(the study's extension) More noise lowers p₁ more (slope of p₁ vs noise ratio, per 10% "
                          "noise", "p1", -1, "/10%"))


def _spectrum_claims(g: _Grid, spec: xr.Dataset, where: str, suffix: str = "", slopes: bool = True) -> list[Claim]:
    """Claims 3a–3b (and the extension 3c–3d when ``slopes``) on the metrics ``spec`` (sve, p1 over noise_ratio,
    seed) of the features of ``where``; ``suffix`` marks the data (``-ID``, ``-OOD``)."""
    out = []
    for cid, text, metric, sign, unit in SPECTRUM_CLAIMS:
        text = f"On the {suffix[1:]} tasks' features, {text[0].lower()}{text[1:]}" if suffix else text
        text = f"{text} ({where}; mean over noisy ratios − clean)"
        out.append(make_claim(cid + suffix, text, "paper", (_at(spec[metric], g.noisy) -
                                                           spec[metric].sel(noise_ratio=g.zero)).values, sign, unit)
                   if g.zero is not None and g.noisy else
                   unjudged(cid + suffix, text, "paper", sign, "noise ratio 0 and a noise ratio > 0"))
    for cid, text, metric, sign, unit in SPECTRUM_SLOPES if slopes else ():
        text = f"{text}; {where})"
        out.append(make_claim(cid + suffix, text, "extension", slope(spec[metric]), sign, unit, 0.1)
                   if spec.sizes["noise_ratio"] >= 2 else
                   unjudged(cid + suffix, text, "extension", sign, "two noise ratios (a slope needs two)"))
    return out


def judge_claims(transfer: xr.Dataset, spectrum: xr.Dataset, *, probe: str = "lp", centering: str = "column",
                 spectrum_dataset: str | None = None, claims: str = "1234") -> list[Claim]:
    """The claims of docs/paper.md → measured effect, 95% CI over seeds, p-value, raw verdict (one protocol and
    setting: ``transfer`` without those dims). ``claims``: the families to judge.

    Claims 1–3 concern the pre-trained features, read through the linear probe ``probe`` (the paper's evaluation of
    the noisy backbones) and the feature spectrum with the given ``centering``; claim 4 compares the heads averaged
    over all noise ratios.
    """
    means = id_ood_means(transfer)
    id_lp, ood_lp = means["id_mean"].sel({"method": probe}), means["ood_mean"].sel({"method": probe})
    g = _Grid.of(id_lp["noise_ratio"].values)
    out = _transfer_claims(g, id_lp, ood_lp, probe) if "1" in claims else []
    if "3" in claims:
        spec = spectrum.sel(centering=centering)
        if "dataset" in spec.dims:
            spec = spec.sel(dataset=spectrum_dataset or str(spec["dataset"].values[0]))
        out += _spectrum_claims(g, spec, f"pre-training test split, {centering} centring")
        for which, metrics in downstream_spectrum(transfer, centering).items():
            out += _spectrum_claims(g, metrics, f"{which} tasks' test features, {centering} centring", f"-{which}",
                                    slopes=False)
    return out + (_nmtune_claims(means, list(transfer["method"].values)) if "4" in claims else [])


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
            out.append(make_claim(f"4{letter}", f"NMTune beats {other.upper()} on {which[:-5].upper()} (mean over "
                                  f"noise ratios, NMTune − {other.upper()})", "paper", diff.values, +1, "points", 100))
    return out


def judge_all(transfer: xr.Dataset, spectrum: xr.Dataset, *, probe: str = "lp", centering: str = "column",
              **kwargs) -> list[Claim]:
    """``judge_claims`` under every (setting, protocol) that holds results, and claim 3 under every other centring
    (settings ``centering=row``, ``centering=none``), each Claim tagged with both; then ``adjust``."""
    out = []
    protocols = [str(p) for p in transfer["protocol"].values]
    for setting in transfer["setting"].values:
        for protocol in protocols:
            part = transfer.sel(setting=setting, protocol=protocol)
            if not np.isfinite(part["accuracy"].sel({"method": probe})).any():
                continue  # e.g. the matched protocol under a robustness setting: not run
            out += [replace(c, setting=str(setting), protocol=protocol)
                    for c in judge_claims(part, spectrum, probe=probe, centering=centering, **kwargs)]
    base = transfer.sel(setting=BASE, protocol=protocols[0])
    for other in (c for c in CENTERINGS if c != centering and c in spectrum["centering"].values):
        out += [replace(c, setting=f"centering={other}", protocol=protocols[0])
                for c in judge_claims(base, spectrum, probe=probe, centering=other, claims="3", **kwargs)]
    return adjust(out)


def _family_key(c: Claim) -> tuple[str, str]:
    """Claim 3 reads the features, which every protocol shares: one hypothesis, not one per protocol."""
    return ("features" if c.id.startswith("3") else c.protocol, c.id)


def adjust(claims: Sequence[Claim]) -> list[Claim]:
    """Each claim with its Holm-adjusted p-value and verdict (docs/paper.md §1a).

    The family is every judged cell of the base setting (claims 1–2 and 4 under each protocol, claim 3 once, each
    per-ratio cell and average; the "at every ratio" rows are not counted: they combine their cells). A cell of a
    robustness setting is adjusted in the family it would have had, had the study been run under that setting (the
    base family with that setting's cells in place of the base's); an "at every ratio" row then follows from its
    cells' adjusted verdicts."""
    elementary = [c for c in claims if not c.parts and c.verdict != NOT_JUDGED]
    base = {_family_key(c): c for c in elementary if c.setting == BASE}
    groups = dict.fromkeys((c.setting, c.protocol if c.setting != BASE else "") for c in claims)
    done: dict[tuple, tuple[float, str, int]] = {}
    for setting, protocol in groups:
        family = dict(base)
        if setting != BASE:
            family.update({_family_key(c): c for c in elementary if (c.setting, c.protocol) == (setting, protocol)})
        result = adjusted({k: two_sided(c.p_value) for k, c in family.items()},
                          {k: c.mean for k, c in family.items()}, {k: c.sign for k, c in family.items()})
        size = sum(np.isfinite(c.p_value) for c in family.values())
        for key, (p, v) in result.items():
            done[(setting, protocol, key)] = (p, v, size)
    out = []
    for c in claims:
        group = (c.setting, c.protocol if c.setting != BASE else "")
        if c.verdict == NOT_JUDGED:
            out.append(replace(c, verdict_adjusted=NOT_JUDGED))
        elif not c.parts:
            p, v, size = done[(*group, _family_key(c))]
            out.append(replace(c, p_adjusted=p, verdict_adjusted=v, family_size=size))
    for c in claims:
        if c.parts and c.verdict != NOT_JUDGED:
            cells = [x for x in out if x.id in c.parts and (x.setting, x.protocol) == (c.setting, c.protocol)]
            v, _, support = combine_every([x.verdict_adjusted for x in cells], [x.p_value for x in cells])
            out.append(replace(c, p_adjusted=max(x.p_adjusted for x in cells), verdict_adjusted=v,
                               support_adjusted=support, family_size=cells[0].family_size))
    order = {id(c): i for i, c in enumerate(claims)}
    by_key = {(c.setting, c.protocol, c.id): c for c in out}
    return [by_key[(c.setting, c.protocol, c.id)] for c in sorted(claims, key=lambda c: order[id(c)])]


CLAIM_COLUMNS = ["protocol", "id", "claim", "form", "effect", "support", "verdict", "p_value", "verdict_adjusted",
                 "support_adjusted", "p_adjusted", "family_size", "mean", "half_width", "n_seeds", "sign", "rule"]


def claims_table(claims: list[Claim]):
    """``claims.csv``: a row per claim and protocol (base setting), the raw verdict beside the adjusted one."""
    import pandas as pd

    frame = pd.DataFrame([asdict(c) for c in claims], columns=[*CLAIM_COLUMNS, "setting"])
    return frame[CLAIM_COLUMNS]


def claims_document(claims: list[Claim], study) -> dict:
    """``claims.json``: the claims, the grid they cover (``noise_ratios``, ``seeds``) and the sha256 of every result
    file read (named relative to the study folder), so that a stale or partial summary can be told from a fresh one."""
    inputs, _ = study.summary_files()
    return {"grid": {"noise_ratios": list(study.config.noise_ratios), "seeds": list(study.config.seeds)},
            "inputs": digests(inputs), "claims": [asdict(c) for c in claims]}


def setting_label(c: Claim) -> str:
    return c.protocol + ("" if c.setting == BASE else f", {c.setting}")


def robustness_table(claims: list[Claim], base_protocol: str = "reference"):
    """claim × (protocol, setting) → raw and adjusted verdict, whether that cell could change the claim's number
    (``verdicts.can_change``; ``not applicable`` verdicts where it could not), and ``robust``: whether the adjusted
    verdicts of the applicable cells agree (``yes``/``no``), or why that is not assessed (fewer than two)."""
    import pandas as pd

    rows = []
    for c in claims:
        applicable = can_change(c.id, c.protocol, c.setting, base_protocol)
        rows.append(dict(claim=c.id, setting=setting_label(c), applicable="yes" if applicable else "no",
                         verdict=c.verdict if applicable else NOT_APPLICABLE,
                         verdict_adjusted=c.verdict_adjusted if applicable else NOT_APPLICABLE, effect=c.effect))
    frame = pd.DataFrame(rows, columns=["claim", "setting", "applicable", "verdict", "verdict_adjusted", "effect"])
    robust = frame[frame["applicable"] == "yes"].groupby("claim", sort=False)["verdict_adjusted"].agg(
        lambda v: robust_label(list(v)))
    return frame.assign(robust=frame["claim"].map(robust).fillna(robust_label([])))


def resample_agreement(claims: list[Claim], *, resamples: int = 1000, seed: int = 0):
    """How often each raw verdict survives resampling the seeds (``verdicts.agreement_over_seed_resamples``); an
    "at every ratio" row resamples its cells' seeds jointly. NaN where the per-seed effects are not at hand."""
    import pandas as pd

    rows = []
    for c in claims:
        if c.parts:
            cells = [x for x in claims if x.id in c.parts and (x.setting, x.protocol) == (c.setting, c.protocol)]
            matrix, signs = [x.per_seed for x in cells], [x.sign for x in cells]
        else:
            matrix, signs = [c.per_seed], [c.sign]
        ok = c.verdict != NOT_JUDGED and all(len(row) for row in matrix)
        agreement = agreement_over_seed_resamples(np.array(matrix), signs, c.verdict, every=bool(c.parts),
                                                  resamples=resamples, seed=seed) if ok else float("nan")
        rows.append(dict(protocol=c.protocol, setting=c.setting, claim=c.id, verdict=c.verdict,
                         agreement_over_seed_resamples=agreement))
    return pd.DataFrame(rows, columns=["protocol", "setting", "claim", "verdict", "agreement_over_seed_resamples"])
