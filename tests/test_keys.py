"""Results that follow the code (nmtune_lib.study.keys, chains.step_status, sweep --dry-run): after a finished smoke
sweep, one thing is changed in a scratch copy of the project and exactly the steps that compute with it rerun."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SMOKE_RUNS, needs_fmnist

pytestmark = needs_fmnist
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def scratch_copy(smoke_sweep: Path, tmp_path: Path) -> Path:
    """The project's code and notebooks, and the finished smoke sweep's run root, in ``tmp_path``."""
    shutil.copytree(ROOT / "nmtune_lib", tmp_path / "nmtune_lib", ignore=IGNORE)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(smoke_sweep, tmp_path / "runs")
    return tmp_path


def sweep(root: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``nmtune sweep --preset smoke`` run from the scratch copy (its code, not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "nmtune_lib.study.cli", "sweep", "--preset", "smoke",
                           "--run-root", str(root / "runs"), *extra], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def would_run(root: Path) -> dict[str, str]:
    """``--dry-run``'s verdict per "run notebook" (``"symmetric-0.20/seed0 04_transfer"``): "done" or its reason."""
    result = sweep(root, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    out = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(\S+)\s+(\d\d_\w+)\s+(.*)$", line)
        if match:
            out[f"{match[1]} {match[2]}"] = match[3]
    assert len(out) == 4 * len(SMOKE_RUNS) + 1, result.stdout
    return out


def rerun(plan: dict[str, str]) -> set[str]:
    """The notebooks that would run (any run), from ``would_run``."""
    return {key.split()[1] for key, verdict in plan.items() if verdict != "done"}


def edit_notebook(root: Path, name: str, kind: str, change) -> None:
    path = root / "notebooks" / f"{name}.ipynb"
    nb = json.loads(path.read_text())
    cell = [c for c in nb["cells"] if c["cell_type"] == kind][-1]
    cell["source"] = change("".join(cell["source"]))
    path.write_text(json.dumps(nb, indent=1))


def test_an_unchanged_project_reruns_nothing(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    assert rerun(would_run(root)) == set()


def test_a_code_cell_of_04_reruns_04_and_05_and_the_sweep_says_why(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    edit_notebook(root, "04_transfer", "code", lambda s: s + '\nprint("edited")')
    plan = would_run(root)
    assert rerun(plan) == {"04_transfer", "05_summary"}
    assert all(v == "would run: notebook code" for k, v in plan.items() if "04_transfer" in k)
    assert plan["(summary) 05_summary"].startswith("would run: runs of its grid rerun")
    result = sweep(root, timeout=900)  # and the sweep itself: 04 and 05 run, 01-03 are skipped
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "skipped (already complete): 01_noise_injection ×2, 02_pretrain ×2, 03_spectrum ×2" in result.stdout
    assert result.stdout.count("running 04_transfer (notebook code)") == 2
    assert "running 05_summary" in result.stdout
    assert rerun(would_run(root)) == set()


def test_a_markdown_cell_of_04_reruns_nothing(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    edit_notebook(root, "04_transfer", "markdown", lambda s: s + "\n\nA sentence more.")
    assert rerun(would_run(root)) == set()


def test_a_preset_value_read_only_by_the_heads_reruns_04_and_05(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    config = root / "nmtune_lib" / "presets.py"
    text = config.read_text()
    assert "head_epochs=2, views=2" in text  # the smoke preset
    config.write_text(text.replace("head_epochs=2, views=2", "head_epochs=3, views=2"))
    plan = would_run(root)
    assert rerun(plan) == {"04_transfer", "05_summary"}
    assert plan[f"{SMOKE_RUNS[0]} 04_transfer"] == "would run: configuration field head_epochs"


def test_a_module_of_the_transfer_stage_reruns_04_and_05(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    with open(root / "nmtune_lib" / "transfer" / "heads.py", "a") as fh:
        fh.write("\n# a comment is a change of the code\n")
    plan = would_run(root)
    assert rerun(plan) == {"04_transfer", "05_summary"}
    assert plan[f"{SMOKE_RUNS[1]} 04_transfer"] == "would run: library module nmtune_lib.transfer.heads"


def test_a_module_of_pretraining_reruns_02_onward(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    with open(root / "nmtune_lib" / "pretraining" / "recipe.py", "a") as fh:
        fh.write("\n# a comment is a change of the code\n")
    plan = would_run(root)
    assert rerun(plan) == {"02_pretrain", "03_spectrum", "04_transfer", "05_summary"}
    assert plan[f"{SMOKE_RUNS[0]} 02_pretrain"] == "would run: library module nmtune_lib.pretraining.recipe"
    assert plan[f"{SMOKE_RUNS[0]} 03_spectrum"] == "would run: an earlier step reruns (02_pretrain)"


def test_a_marker_written_before_code_was_tracked_is_stale_and_says_so(smoke_sweep, tmp_path):
    root = scratch_copy(smoke_sweep, tmp_path)
    marker = root / "runs" / "smoke" / "fashion_mnist" / SMOKE_RUNS[0] / "01_noise_injection.done"
    done = json.loads(marker.read_text())
    done["key"] = {k: v for k, v in done["key"].items() if k in ("parameters", "inputs")}  # an older version's key
    marker.write_text(json.dumps(done))
    plan = would_run(root)
    assert plan[f"{SMOKE_RUNS[0]} 01_noise_injection"] == "would run: written before code was tracked"
    assert plan[f"{SMOKE_RUNS[1]} 01_noise_injection"] == "done"


def test_the_report_refuses_runs_computed_by_other_code(smoke_sweep, tmp_path):
    from nmtune_lib.run import Study
    from nmtune_lib.study.report import check_code

    root = scratch_copy(smoke_sweep, tmp_path)
    study = Study.from_parameters("smoke", run_root=str(root / "runs"))
    check_code(study)  # as the sweep left it
    assert (root / "runs" / "smoke" / "provenance.json").exists()
    marker = root / "runs" / "smoke" / "fashion_mnist" / SMOKE_RUNS[1] / "04_transfer.done"
    done = json.loads(marker.read_text())
    done["key"]["code"]["notebook"] = "0" * 64
    marker.write_text(json.dumps(done))
    with pytest.raises(ValueError, match=f"04_transfer of 1 run.*{SMOKE_RUNS[1]}"):
        check_code(study)


def test_every_config_field_is_read_by_some_step_and_the_early_steps_read_few():
    from nmtune_lib.config import StudyConfig
    from nmtune_lib.study.keys import NEUTRAL, step_fields

    fields = set(StudyConfig.__dataclass_fields__) - set(NEUTRAL)
    assert set(step_fields("05_summary")) == fields  # the summary: everything
    assert "head_epochs" in step_fields("04_transfer") and "head_epochs" not in step_fields("02_pretrain")
    assert "epochs" in step_fields("02_pretrain") and "epochs" not in step_fields("04_transfer")
    for name in ("01_noise_injection", "02_pretrain", "03_spectrum", "04_transfer"):
        assert set(step_fields(name)) <= fields, name
