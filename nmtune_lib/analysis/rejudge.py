"""Committed report sets re-judged from their tables, without re-running them (``nmtune rejudge``; docs/paper.md
§1a, "Re-judging committed sets").

The per-run results of a committed set are not in the repository, but its tables are, and a cell's verdict, p-value
and adjusted verdict follow from its mean, 95 % half-width and number of seeds (``verdicts.p_value``). A set written
before the claims carried p-values (``claims.csv`` without an ``id`` column) is read as follows:

- ``claims.csv``: each claim's effect ("mean ± half unit (n=k seeds)", as written: three significant digits of the
  mean, two of the half-width) and its rule's sign. The old 1a and 2a were averages over ratios: they become
  ``1a-mean`` and ``2a-mean`` (``secondary``); 3c and 3d are marked ``extension``.
- ``noise_effects.csv``: each noise ratio's paired effect (full precision): the ``component`` cells of 1a (ID, the
  slight ratios) and 2a (OOD, every noisy ratio), from which the paper's "at every ratio" rows are formed.
- ``robustness.csv``: the effect of every claim under every robustness setting (no per-ratio cells there: the
  robustness of 1a and 2a in their paper form is not available for these sets).
- ``stability.csv``: the agreement over seed resamples of the claims it lists (the new per-ratio rows have none:
  their per-seed effects are not committed), written as ``resample_agreement.csv``.

Then ``claims.adjust`` gives every cell its Holm-adjusted verdict, exactly as notebook 05 does for a new set. A set
already in the new form is left as it is (its numbers came from the per-seed effects).
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..files import atomic_write_text
from .claims import (BASE, Claim, SLIGHT, TEXT_1A, TEXT_2A, adjust, claim_order, claims_table, every, from_interval,
                     ratio_texts, robustness_table, unjudged)

EFFECT = re.compile(r"^\s*([+-]?[\d.]+(?:e[+-]?\d+)?)(?: ± ([\d.]+(?:e[+-]?\d+)?))?\s*(.*?)\s*\(n=(\d+) seeds\)")
RENAMED = {"1a": "1a-mean", "2a": "2a-mean"}  # the old averaged rows
AGREEMENT = "resample_agreement.csv"


def is_new_form(folder: str | Path) -> bool:
    return "id" in pd.read_csv(Path(folder) / "claims.csv", nrows=0).columns


def parse_effect(effect: str) -> tuple[float, float, int, str]:
    """``"-1.41 ± 1.2 points (n=5 seeds)"`` → (mean, half-width, seeds, unit); NaN mean for "not judged: …"."""
    match = EFFECT.match(effect)
    if not match:
        return math.nan, math.nan, 0, ""
    mean, half, unit, n = match.groups()
    return float(mean), float(half) if half else math.nan, int(n), unit


def _old_claim(cid: str, text: str, effect: str, sign: int, protocol: str, setting: str) -> Claim:
    mean, half, n, unit = parse_effect(effect)
    new_id = RENAMED.get(cid, cid)
    text = text.split(". ", 1)[1]
    form = "secondary" if new_id != cid else "extension" if cid in ("3c", "3d") else "paper"
    if new_id == "1a-mean":
        text = text.replace("ID transfer", "ID transfer on average").replace("noisy − clean", "their mean − clean")
    elif new_id == "2a-mean":
        text = ("Pre-training noise hurts OOD transfer on average over the noisy ratios (LP OOD mean, their mean − "
                "clean)")
    elif form == "extension":
        text = "(the study's extension) " + text
    if math.isnan(mean):
        return replace(unjudged(new_id, text, form, sign, effect.partition("lacks ")[2]), protocol=protocol,
                       setting=setting)
    return from_interval(new_id, text, form, mean, half, n, sign, unit, protocol=protocol, setting=setting)


def _components(effects: pd.DataFrame, protocol: str) -> list[Claim]:
    """1a and 2a at every ratio: a component per ratio of ``noise_effects.csv`` and the paper's row combining them."""
    out = []
    part = effects[effects["protocol"] == protocol]
    for cid, template, mean_of, sign in (("1a", TEXT_1A, "ID", +1), ("2a", TEXT_2A, "OOD", -1)):
        rows = part[part["mean_of"] == mean_of]
        ratios = [float(r) for r in rows["noise_ratio"]]
        if cid == "1a":
            ratios = [r for r in ratios if any(math.isclose(r, s) for s in SLIGHT)]
        if not ratios:
            continue
        texts = ratio_texts(cid, template, ratios)
        cells = []
        for r in ratios:
            row = rows[[math.isclose(float(x), r) for x in rows["noise_ratio"]]].iloc[0]
            key = next(k for k in texts if k.startswith(f"{cid}@") and math.isclose(
                float(k.partition("@")[2].rstrip("%")) / 100, r))
            cells.append(from_interval(key, *texts[key], float(row["mean_points"]), float(row["half_width_points"]),
                                       int(row["n_seeds"]), sign, "points", protocol=protocol))
        out += [replace(every(cid, texts[cid][0], cells, sign), protocol=protocol), *cells]
    return out


def claims_from_tables(folder: str | Path) -> list[Claim]:
    """Every cell of an old-form set (see the module docstring), adjusted by ``claims.adjust``."""
    folder = Path(folder)
    old = pd.read_csv(folder / "claims.csv")
    sign = {text: (+1 if "above 0" in str(rule).split(",")[0] else -1) for text, rule in zip(old["claim"], old["rule"])}
    sign_of = {t.split(".")[0]: s for t, s in sign.items()}
    text_of = {t.split(".")[0]: t for t in old["claim"]}
    claims: list[Claim] = []
    effects = pd.read_csv(folder / "noise_effects.csv") if (folder / "noise_effects.csv").exists() else None
    for protocol in dict.fromkeys(old["protocol"]):
        if effects is not None:
            claims += _components(effects, protocol)
        for _, row in old[old["protocol"] == protocol].iterrows():
            cid = row["claim"].split(".")[0]
            claims.append(_old_claim(cid, row["claim"], row["effect"], sign[row["claim"]], protocol, BASE))
    robust = folder / "robustness.csv"
    if robust.exists():
        for _, row in pd.read_csv(robust).iterrows():
            protocol, _, setting = str(row["setting"]).partition(", ")
            if setting and row["claim"] in text_of:
                claims.append(_old_claim(row["claim"], text_of[row["claim"]], row["effect"], sign_of[row["claim"]],
                                         protocol, setting))
    return sorted(adjust(claims), key=lambda c: (c.setting != BASE, c.setting, c.protocol != "reference",
                                                 claim_order(c.id)))


OLD_WORDING = re.compile(r"\(share of 1,000 resamples giving the same verdict; [^)]*\)")  # the old pages' aside
NEW_WORDING = ("(share of 1,000 resamples giving the same verdict: agreement over seed resamples,\nnot a rerun: "
               "another machine changes every seed's number)")
BANNER = ('<p class="rejudged" style="margin:1em 2em;padding:.5em;background:#fef7e0">This page was rendered when the '
          'set was made, before the claims carried p-values. The set\'s verdicts now are those of its <a '
          'href="index.html">index</a> and <code>claims.csv</code>: re-judged from its tables, adjusted for '
          'multiplicity (<code>nmtune rejudge</code>, docs/paper.md §1a).</p>')


def annotate_summary_page(folder: str | Path) -> bool:
    """The set's rendered summary page (``05_summary.html``), made before the claims were re-judged, says so above
    its tables, and its seed bootstrap is called what it is; True if the page changed (idempotent)."""
    page = Path(folder) / "05_summary.html"
    if not page.exists():
        return False
    text = page.read_text()
    new = OLD_WORDING.sub(NEW_WORDING, text)
    if 'class="rejudged"' not in new:
        new = re.sub(r'(<p class="nav"[^>]*>.*?</p>)', lambda m: m.group(1) + BANNER, new, count=1, flags=re.S)
    if new != text:
        atomic_write_text(page, new)
    return new != text


def rejudge(folder: str | Path) -> list[Claim] | None:
    """Re-judge an old-form report set in place: ``claims.csv`` and ``robustness.csv`` rewritten in the new form,
    ``stability.csv`` → ``resample_agreement.csv``, its rendered summary page annotated (``annotate_summary_page``).
    None (no table written) when the set is already in the new form."""
    folder = Path(folder)
    if is_new_form(folder):
        annotate_summary_page(folder)
        return None
    claims = claims_from_tables(folder)
    base = [c for c in claims if c.setting == BASE]
    atomic_write_text(folder / "claims.csv", claims_table(base).to_csv(index=False))
    if (folder / "robustness.csv").exists():
        atomic_write_text(folder / "robustness.csv", robustness_table(claims).to_csv(index=False))
    stability = folder / "stability.csv"
    if stability.exists():
        old = pd.read_csv(stability)
        agreement = old.assign(claim=old["claim"].map(lambda c: RENAMED.get(c, c))).rename(
            columns={"agreement": "agreement_over_seed_resamples"})
        known = {(c.protocol, c.setting, c.id) for c in claims}
        rows = [dict(protocol=c.protocol, setting=c.setting, claim=c.id, verdict=c.verdict,
                     agreement_over_seed_resamples=math.nan) for c in claims
                if (c.protocol, c.setting, c.id) not in set(zip(agreement["protocol"], agreement["setting"],
                                                                  agreement["claim"]))]
        table = pd.concat([agreement[[(p, s, c) in known for p, s, c in zip(
            agreement["protocol"], agreement["setting"], agreement["claim"])]], pd.DataFrame(rows)])
        atomic_write_text(folder / AGREEMENT, table.to_csv(index=False))
        stability.unlink()
    annotate_summary_page(folder)
    return claims
