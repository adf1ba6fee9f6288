"""The README's tables of report sets (nmtune_lib.analysis.tables): claims side by side, as claims.csv holds them,
and stage times."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from nmtune_lib.analysis.tables import (compare_claims, effects_table, folder_table, format_effect, read_claims,
                                      short_claim, time_table, to_markdown)
from nmtune_lib.analysis.claims import adjust, claims_table, make_claim, unjudged
from nmtune_lib.study.cli import main

TEXTS = {"1a": ("Slight pre-training noise (5%, 10%) improves ID transfer (LP ID mean, noisy − clean)", +1),
         "3a": ("Noise flattens the spectrum: higher SVE (mean over noisy ratios − clean; column centring)", +1),
         "3c": ("(the study's extension) More noise flattens it more (slope of SVE vs noise ratio, nats per 10% noise)",
                +1),
         "4c": ("NMTune beats MLP on ID (mean over noise ratios, NMTune − MLP)", +1)}


def write_set(folder, per_seed: dict[str, list[float]], protocols=("reference", "matched"), skipped=()):
    """A report set's claims.csv, written as notebook 05 writes it (claims_table of judged Claims)."""
    claims = []
    for protocol in protocols:
        for cid, (text, sign) in TEXTS.items():
            form = "extension" if cid == "3c" else "paper"
            claim = (unjudged(cid, text, form, sign, "5% or 10%") if cid in skipped else
                     make_claim(cid, text, form, np.array(per_seed[cid]), sign, "points"))
            claims.append(replace(claim, protocol=protocol))
    folder.mkdir()
    claims_table(adjust(claims)).to_csv(folder / "claims.csv", index=False)
    return folder


def test_cells_are_the_written_effects_and_verdicts(tmp_path):
    a = write_set(tmp_path / "default", {"1a": [-1.2, -1.5, -1.6, -1.3, -1.4], "3a": [0.04, 0.05, 0.03, 0.04, 0.04],
                                        "3c": [0.1, -0.1, 0.05, 0.0, 0.02], "4c": [0.2, 0.1, 0.25, 0.15, 0.2]})
    b = write_set(tmp_path / "asymmetric", {"3a": [0.3, 0.31, 0.32], "3c": [0.1, 0.09, 0.1], "4c": [5.0, -5.0, 1.0]},
                  skipped={"1a"})
    table = compare_claims([a, b])
    assert list(table.columns) == ["default, reference", "asymmetric, reference", "default, matched",
                                   "asymmetric, matched"]
    assert list(table.index) == ["1a. Slight pre-training noise (5%, 10%) improves ID transfer",
                                 "3a. Noise flattens the spectrum: higher SVE",
                                 "3c. (the study's extension) More noise flattens it more",
                                 "4c. NMTune beats MLP on ID"]
    cell = table.loc[table.index[0], "default, reference"]
    mean, rest = cell.replace("−", "-").split(" ± ")
    assert float(mean) == pytest.approx(-1.4, abs=0.05) and rest.endswith("**contradicted**")
    assert table.loc[table.index[0], "asymmetric, matched"] == "**not judged**"
    assert table.loc[table.index[1], "asymmetric, reference"].endswith("**supported**")
    assert table.loc[table.index[3], "asymmetric, reference"].endswith("**inconclusive**")
    assert (table.loc[table.index[1:3], ["default, matched", "asymmetric, matched"]] == "(same features)").all().all()
    assert not table.loc[table.index[::3], ["default, matched"]].eq("(same features)").any().any()
    markdown = to_markdown(table).splitlines()
    assert markdown[0] == "| claim | " + " | ".join(table.columns) + " |" and len(markdown) == 2 + len(table)


@pytest.mark.parametrize("effect, cell", [("-1.41 ± 1.2 points (n=5 seeds)", "−1.4 ± 1.2 **v**"),
                                          ("+0.176 ± 0.098 points (n=5 seeds)", "+0.176 ± 0.098 **v**"),
                                          ("-0.0085 ± 1.6 points (n=5 seeds)", "−0.01 ± 1.6 **v**"),
                                          ("-0.00092 ± 0.0021 /10% (n=5 seeds)", "−0.00092 ± 0.0021 **v**"),
                                          ("+0.5 points (n=1 seeds)", "+0.5 **v**"),
                                          ("not judged: the grid lacks 5%", "**v**")])
def test_effects_are_rounded_to_their_half_width(effect, cell):
    assert format_effect(effect, "v") == cell


def test_short_claim_drops_the_measure_but_keeps_what_a_continuation_is_about():
    assert short_claim("2a. Any noise hurts OOD (LP OOD mean (over ratios) − clean)") == "2a. Any noise hurts OOD"
    continuation = "3d. … and more so (slope of p₁ vs noise ratio, per 10%)"
    assert short_claim(continuation) == "3d. … and more so (slope of p₁ vs noise ratio)"
    assert short_claim("no measure") == "no measure"


def test_bad_folders_protocols_and_labels_are_named_before_reading(tmp_path, capsys):
    good = write_set(tmp_path / "only_reference", {c: [1.0, 2.0] for c in TEXTS}, protocols=("reference",))
    with pytest.raises(ValueError, match="missing/claims.csv does not exist"):
        compare_claims([good, tmp_path / "missing"])
    with pytest.raises(ValueError, match="no protocol 'matched'"):
        compare_claims([good])
    with pytest.raises(ValueError, match="accepted: one folder or more, protocols among reference, matched"):
        compare_claims([good], protocols=["ref"])
    assert main(["compare", str(good), "--labels", "a", "b"]) == 2
    assert "expected one label per folder (1)" in capsys.readouterr().err
    assert main(["compare", str(good), "--protocols", "reference", "--labels", "mine"]) == 0
    assert capsys.readouterr().out.startswith("| claim | mine, reference |")


def test_time_table_per_run_and_over_the_grid(tmp_path, capsys):
    (tmp_path / "timing.csv").write_text("stage,seconds\n01_noise_injection,36.0\n04_transfer,12345.6\n"
                                         "05_summary,16.3\ntotal,5876.6\n")
    (tmp_path / "config.yaml").write_text("noise_ratios:\n- 0.0\n- 0.1\nseeds:\n- 0\n- 1\n- 2\n")
    assert time_table(tmp_path).splitlines()[2:] == ["| `01_noise_injection` | 6.0 s | 36 s |",
                                                    "| `04_transfer` | 2,058 s | 12,346 s |",
                                                    "| `05_summary` |  | 16 s |",
                                                    "| sweep, wall clock (6 runs) | | **5,877 s** |"]
    (tmp_path / "config.yaml").unlink()
    assert main(["timing", str(tmp_path)]) == 2
    assert "config.yaml missing" in capsys.readouterr().err


def test_effects_table_rows_per_protocol_and_mean_columns_per_ratio(tmp_path, capsys):
    rows = [("reference", "ID", 0.05, -0.634, 1.6149), ("reference", "ID", 0.1, 0.005, 0.2),
            ("matched", "OOD", 0.05, 2.0, 0.125), ("matched", "OOD", 0.1, -8.001, 3.979)]
    pd.DataFrame(rows, columns=["protocol", "mean_of", "noise_ratio", "mean_points", "half_width_points"]).to_csv(
        tmp_path / "noise_effects.csv", index=False)
    assert effects_table(tmp_path).splitlines() == ["| protocol | mean of | 5% | 10% |", "|---|---|---|---|",
                                                    "| reference | ID | −0.63 ± 1.61 | +0.01 ± 0.20 |",
                                                    "| matched | OOD | +2.00 ± 0.12 | −8.00 ± 3.98 |"]
    (tmp_path / "noise_effects.csv").unlink()
    assert main(["effects", str(tmp_path)]) == 2
    assert "noise_effects.csv missing" in capsys.readouterr().err


def test_effects_by_task_table_has_a_row_per_protocol_and_task(tmp_path, capsys):
    rows = [("reference", "ID", "mnist5k", 0.05, -0.72, 2.462), ("reference", "ID", "mnist5k", 0.1, -1.84, 1.878),
            ("reference", "OOD", "digits_shift", 0.05, 1.9477, 12.8005),
            ("reference", "OOD", "digits_shift", 0.1, -2.2148, 9.1297)]
    pd.DataFrame(rows, columns=["protocol", "mean_of", "task", "noise_ratio", "mean_points",
                                "half_width_points"]).to_csv(tmp_path / "noise_effects_by_task.csv", index=False)
    expected = ["| protocol | mean of | task | 5% | 10% |", "|---|---|---|---|---|",
                "| reference | ID | mnist5k | −0.72 ± 2.46 | −1.84 ± 1.88 |",
                "| reference | OOD | digits_shift | +1.95 ± 12.80 | −2.21 ± 9.13 |"]
    assert effects_table(tmp_path, by_task=True).splitlines() == expected
    assert main(["effects", "--by-task", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["effects", str(tmp_path)]) == 2  # the per-mean table is another file
    assert "noise_effects.csv missing" in capsys.readouterr().err
    assert folder_table("effects", tmp_path, by_task=True) == "\n".join(expected)


def test_scores_table_has_every_ratio_clean_included(tmp_path, capsys):
    task = "fmnist_domains_sketch"
    rows = [("reference", "OOD", task, 0.0, 45.0, 3.041), ("reference", "OOD", task, 0.3, 47.3125, 3.4349),
            ("matched", "OOD", task, 0.0, 29.19, 2.7)]
    pd.DataFrame(rows, columns=["protocol", "mean_of", "task", "noise_ratio", "mean_percent",
                                "half_width_percent"]).to_csv(tmp_path / "task_scores.csv", index=False)
    expected = ["| protocol | mean of | task | 0% | 30% |", "|---|---|---|---|---|",
                "| reference | OOD | fmnist_domains_sketch | 45.00 ± 3.04 | 47.31 ± 3.43 |",
                "| matched | OOD | fmnist_domains_sketch | 29.19 ± 2.70 |  |"]
    assert folder_table("scores", tmp_path) == "\n".join(expected)
    assert main(["scores", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    # two sets in one table: a first column names each row's set (its folder)
    other = tmp_path / "class"
    other.mkdir()
    columns = ["protocol", "mean_of", "task", "noise_ratio", "mean_percent", "half_width_percent"]
    pd.DataFrame([rows[0][:4] + (58.55, 6.57)], columns=columns).to_csv(other / "task_scores.csv", index=False)
    assert main(["scores", str(tmp_path), str(other)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| set | protocol | mean of | task | 0% | 30% |", "|---|---|---|---|---|---|",
        f"| {tmp_path.name} | reference | OOD | fmnist_domains_sketch | 45.00 ± 3.04 | 47.31 ± 3.43 |",
        f"| {tmp_path.name} | matched | OOD | fmnist_domains_sketch | 29.19 ± 2.70 |  |",
        "| class | reference | OOD | fmnist_domains_sketch | 58.55 ± 6.57 |  |"]
    with pytest.raises(ValueError, match="nmtune timing: one report folder, got 2"):
        folder_table("timing", tmp_path, other)
    (tmp_path / "task_scores.csv").unlink()
    assert main(["scores", str(tmp_path)]) == 2
    assert "task_scores.csv missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="command 'score'; accepted: 'timing', 'effects', 'scores', 'contrast'"):
        folder_table("score", tmp_path)


def test_scores_and_contrast_read_one_head_or_a_difference_of_two_from_a_file_that_lists_every_head(tmp_path, capsys):
    task = "fmnist_domains_sketch"
    columns = ["protocol", "method", "mean_of", "task", "noise_ratio", "mean_percent", "half_width_percent",
               "n_seeds", "seed0", "seed1"]
    base, other = tmp_path / "cropped", tmp_path / "uncropped"
    for folder, shift in ((base, 0.0), (other, 2.0)):
        folder.mkdir()
        rows = [("reference", method, "OOD", task, 0.0, level + shift, 1.0, 2, level + shift - 1, level + shift + 1)
                for method, level in (("lp", 70.0), ("mlp", 60.0), ("nmtune", 61.0))]
        pd.DataFrame(rows, columns=columns).to_csv(folder / "task_scores.csv", index=False)
    head = ["| protocol | mean of | task | 0% |", "|---|---|---|---|"]
    assert folder_table("scores", base) == "\n".join(head + [f"| reference | OOD | {task} | 70.00 ± 1.00 |"])
    assert main(["scores", "--method", "mlp", str(base)]) == 0
    assert capsys.readouterr().out.splitlines() == head + [f"| reference | OOD | {task} | 60.00 ± 1.00 |"]
    assert main(["contrast", "--method", "nmtune", str(base), str(other)]) == 0
    assert "| uncropped | reference | OOD | fmnist_domains_sketch | +2.00 ± 0.00 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--method 'MLP': .*cropped/task_scores.csv has the scores of lp, mlp, "
                                         r"nmtune only; accepted: one of them, or two as 'a-b'"):
        folder_table("scores", base, method="MLP")
    # a difference of two heads, seed by seed: NMTune − MLP is +1 in each seed of both sets, so its contrast is 0
    for method, cell in (("nmtune-mlp", "+1.00 ± 0.00"), ("mlp-lp", "−10.00 ± 0.00")):
        assert folder_table("scores", base, method=method).splitlines()[-1] == f"| reference | OOD | {task} | {cell} |"
    assert main(["contrast", "--method", "nmtune-mlp", str(base), str(other)]) == 0
    assert "| uncropped | reference | OOD | fmnist_domains_sketch | +0.00 ± 0.00 |" in capsys.readouterr().out
    for bad in ("nmtune-nmtune", "nmtune-head"):
        with pytest.raises(ValueError, match=f"--method '{bad}'"):
            folder_table("contrast", base, other, method=bad)
    # a file written before notebook 05 listed every head holds the linear probe's scores alone
    pd.read_csv(other / "task_scores.csv").query("method == 'lp'").drop(columns="method").to_csv(
        other / "task_scores.csv", index=False)
    assert "72.00 ± 1.00" in folder_table("scores", other)
    with pytest.raises(ValueError, match=r"has the scores of lp only; accepted: .* \(written before notebook 05"):
        folder_table("contrast", base, other, method="mlp")


def test_contrast_pairs_seeds_and_reports_score_and_effect_differences(tmp_path, capsys):
    from nmtune_lib.analysis.aggregate import mean_ci

    task = "fmnist_domains_sketch"
    columns = ["protocol", "mean_of", "task", "noise_ratio", "mean_percent", "half_width_percent", "n_seeds",
               "seed0", "seed1", "seed2"]
    base, other = tmp_path / "class", tmp_path / "brightness"
    for folder, clean, noisy in ((base, [60.0, 50.0, 55.0], [58.0, 49.0, 52.0]),
                                 (other, [45.0, 41.0, 44.0], [46.0, 43.0, 44.5])):
        folder.mkdir()
        rows = [("reference", "OOD", task, ratio, float(np.mean(v)), 1.0, 3, *v)
                for ratio, v in ((0.0, clean), (0.3, noisy))]
        pd.DataFrame(rows, columns=columns).to_csv(folder / "task_scores.csv", index=False)
    # brightness − class per seed: 0 % −15, −9, −11; 30 % −12, −6, −7.5; effects −2 … +2.5 against +1, +2, +1.5 …
    clean, noisy = np.array([-15.0, -9.0, -11.0]), np.array([-12.0, -6.0, -7.5])
    cell = lambda v: "{:+.2f} ± {:.2f}".format(*mean_ci(v)).replace("-", "−")  # noqa: E731
    expected = ["| set | protocol | mean of | task | 0% | 30% | effect 30% |", "|---|---|---|---|---|---|---|",
                f"| brightness | reference | OOD | {task} | {cell(clean)} | {cell(noisy)} | {cell(noisy - clean)} |"]
    assert main(["contrast", str(base), str(other)]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert cell(noisy - clean) == "+3.17 ± 0.72"  # (3 + 3 + 3.5) / 3, paired: far tighter than the two sets' spread
    # a set without seed columns (summarised before they existed), or no base to compare with, is named
    pd.read_csv(other / "task_scores.csv").drop(columns=["seed0", "seed1", "seed2"]).to_csv(
        other / "task_scores.csv", index=False)
    with pytest.raises(ValueError, match="has no per-seed columns"):
        folder_table("contrast", base, other)
    with pytest.raises(ValueError, match="pass the base set, then one or more sets"):
        folder_table("contrast", base)
