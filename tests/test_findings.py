"""The generated findings (nmtune_lib.study.findings) and the experiments they come from (nmtune_lib.study.experiments):
committed and regenerated agree, and any change of a committed claims table makes ``nmtune findings --check`` fail."""
import shutil

import pandas as pd
import pytest

from conftest import ROOT
from nmtune_lib.study.experiments import load_experiments
from nmtune_lib.study.findings import check_findings, findings_document, write_findings
from nmtune_lib.study.cli import main


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A copy of what the findings read: experiments.yaml, README.md, reports/ (its tables), bench/."""
    root = tmp_path_factory.mktemp("project")
    for name in ("experiments.yaml", "README.md"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("reports", "bench"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("*.html", "*.png", "*.css"))
    write_findings(root)  # as committed, whatever the working tree's state
    return root


def test_the_committed_findings_are_the_regenerated_ones(capsys):
    assert check_findings() == []
    assert main(["findings", "--check"]) == 0


def test_changing_any_committed_claims_cell_makes_the_check_fail(scratch):
    claims = sorted((scratch / "reports").rglob("claims.csv"))
    assert len(claims) >= 9 and check_findings(scratch) == []
    for path in claims:
        original = path.read_text()
        frame = pd.read_csv(path, keep_default_na=False)
        frame = frame.astype({"p_value": str})
        frame.loc[len(frame) // 2, "p_value"] = "0.987654"  # one cell of one row
        frame.to_csv(path, index=False)
        try:
            problems = check_findings(scratch)
            assert problems and "reports/README.md: line" in problems[0], path
        finally:
            path.write_text(original)
    assert check_findings(scratch) == []


def test_a_changed_verdict_changes_the_findings_text_and_the_readme_headline(scratch):
    path = scratch / "reports" / "default" / "claims.csv"
    original = path.read_text()
    frame = pd.read_csv(path, keep_default_na=False)
    row = frame.index[(frame["id"] == "4a") & (frame["protocol"] == "reference")][0]
    frame.loc[row, "verdict_adjusted"] = "contradicted"
    frame.to_csv(path, index=False)
    try:
        document, blocks, _ = findings_document(scratch)
        assert "**contradicted**" in blocks["headline"].split("4a.")[1].splitlines()[0]
        problems = check_findings(scratch)
        assert {p.split(":")[0] for p in problems} == {"reports/README.md", "README.md"}
    finally:
        path.write_text(original)


def test_every_experiment_is_checked_and_listed(capsys):
    experiments = load_experiments()
    names = set(experiments)
    for probe in ("caption_class", "view_uncropped", "view_zoom", "study_bicubic", "study_bilinear",
                  "rerun_lp_asymmetric", "learning_curve"):  # every former Makefile probe and rerun has an entry
        assert probe in names
    assert main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"| {name} |" in listed for name in names)
    assert main(["experiment", "no_such_experiment"]) == 2
    assert "accepted: default" in capsys.readouterr().err


def test_a_bad_experiment_entry_is_named_before_anything_runs(tmp_path):
    bad = tmp_path / "experiments.yaml"
    for entry, message in (("{question: q, report: reports/x, presett: default}", "unknown field"),
                           ("{question: q, report: reports/x, preset: nope}", "preset 'nope'"),
                           ("{question: q, report: reports/x, settings: {head_epochs: -1}}", "head_epochs"),
                           ("{question: q, report: reports/x, kind: bake}", "kind 'bake'"),
                           ("{report: reports/x}", "'question' is missing")):
        bad.write_text(f"experiments:\n  x: {entry}\n")
        with pytest.raises(ValueError, match=message):
            load_experiments(bad)


def test_no_committed_report_names_a_path_of_the_machine_that_made_it():
    from nmtune_lib.study.report import ABSOLUTE

    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "reports").rglob("*")
                 if p.is_file() and p.suffix in (".html", ".csv", ".yaml", ".md", ".json")
                 and any(prefix in p.read_text(errors="replace") for prefix in ("/work/", "/tmp/", "/home/", "/root/"))]
    assert not offenders, offenders[:5]
    assert ABSOLUTE.search("run_root: /work/x/runs") and not ABSOLUTE.search("run_root: runs")


def test_a_page_is_relocated_titled_and_its_configuration_folded_once():
    from nmtune_lib.study.report import finish_page, page_title, relocate

    assert relocate("run_root: /work/a/runs\nrun directory: /tmp/b/runs/default/x", ("/work/a/runs",)) == \
        "run_root: runs\nrun directory: runs/default/x"
    assert relocate("'run_root': '/work/fine_runs'", ("/work/fine_runs",)) == "'run_root': 'runs'"
    page = ('<html><head><title>old</title></head><body><p style="margin:1em 2em"><a href="index.html">back</a></p>'
            "<pre>{'preset': 'default',\n 'run_root': '/home/me/runs'}</pre><pre>epochs: 2\nrun_root: /home/me/runs\n"
            "</pre><pre>just output</pre></body></html>")
    title = page_title("default", "symmetric-0.10_seed3_04_transfer.html")
    assert title == "default · symmetric 10 % noise · seed 3 · 04 transfer"
    done = finish_page(page, set_name="default", title=title)
    assert done.count("<details>") == 2 and "<summary>notebook parameters</summary>" in done
    assert "<pre>just output</pre>" in done and "/home/" not in done and f"<title>{title}</title>" in done
    assert 'href="../index.html"' in done and done.count('class="nav"') == 1
    assert finish_page(done, set_name="default", title=title) == done  # idempotent
