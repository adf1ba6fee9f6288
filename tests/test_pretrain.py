"""Pre-training: resume equivalence, refusal of foreign checkpoints, determinism, learning, DDP, bad inputs, files."""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from nmtune_lib.pretraining.checkpoints import load_pretrained, read_checkpoint
from nmtune_lib.config import StudyConfig
from nmtune_lib.data.datasets import load_dataset, stratified_subset
from nmtune_lib.pretraining.history import HISTORY_FIELDS, load_history, plot_history
from nmtune_lib.files import file_sha256
from nmtune_lib.data.noise import inject_label_noise
from nmtune_lib.pretraining.pretrain import main, pretrain
from nmtune_lib.pretraining.recipe import epoch_seed, one_cycle
from nmtune_lib.run import BACKBONE, CHECKPOINT, HISTORY_CSV, HISTORY_NC, PRETRAIN_SUMMARY, Run

from conftest import needs_fmnist

N_TRAIN = 512  # tiny: each run takes a second or two on CPU


def _config(**changes) -> StudyConfig:
    base = dict(dataset="mnist5k", train_subset=N_TRAIN, epochs=2, batch_size=64, lr=0.1, progress=False,
                device="cpu", num_threads=1)
    return StudyConfig.from_preset("smoke", **{**base, **changes})


def _run(run_root: Path, noise_ratio: float = 0.2, seed: int = 0, **changes) -> Run:
    """The run (noise_ratio, seed) of ``_config(**changes)`` under ``run_root``."""
    return Run.of(_config(run_root=str(run_root), **changes), noise_ratio, seed)


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    return train.subset(stratified_subset(train.labels, N_TRAIN, 0)), test.subset(torch.arange(500))


@pytest.fixture(scope="module")
def noisy(digits):
    return inject_label_noise(digits[0].labels, 0.2, num_classes=10, seed=0)


def _weights(run: Run) -> dict[str, torch.Tensor]:
    return torch.load(run.backbone, weights_only=False)["model"]


# --- resume, refusal, determinism ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(digits, noisy, tmp_path_factory):
    """One uninterrupted run of 2 epochs (shared by several tests)."""
    run = _run(tmp_path_factory.mktemp("straight"))
    return run, pretrain(run, digits[0], noisy, digits[1])


def test_resumed_run_equals_uninterrupted(digits, noisy, straight, tmp_path):
    rng_before = torch.get_rng_state()
    run = _run(tmp_path)
    part = pretrain(run, digits[0], noisy, digits[1], stop_after=1)  # "interrupted"
    assert part["finished"] is False and part["epochs_done"] == 1
    assert run.checkpoint.exists() and not run.pretrain_summary.exists()
    summary = pretrain(run, digits[0], noisy, digits[1])  # resumes at epoch 2
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global RNG mutation
    a, b = _weights(straight[0]), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["checkpoint_sha256"] == straight[1]["checkpoint_sha256"]  # byte-identical backbone.pt
    assert summary["final_test_acc"] == straight[1]["final_test_acc"]


def test_same_seed_same_weights_other_seed_differs(digits, noisy, straight, tmp_path):
    again = pretrain(_run(tmp_path), digits[0], noisy, digits[1])
    other = pretrain(_run(tmp_path, seed=1), digits[0], noisy, digits[1])
    assert again["checkpoint_sha256"] == straight[1]["checkpoint_sha256"]
    assert other["checkpoint_sha256"] != straight[1]["checkpoint_sha256"]


def test_mismatched_checkpoint_is_refused(digits, noisy, tmp_path):
    run = _run(tmp_path)
    pretrain(run, digits[0], noisy, digits[1], stop_after=1)
    before = file_sha256(run.checkpoint)
    with pytest.raises(ValueError, match=r"refusing to resume") as err:
        pretrain(_run(tmp_path, lr=0.05), digits[0], noisy, digits[1])  # same directory, another config
    assert '"lr": 0.1' in str(err.value) and '"lr": 0.05' in str(err.value)  # names both configs
    other_noise = inject_label_noise(digits[0].labels, 0.3, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"refusing to resume") as err:
        pretrain(run, digits[0], other_noise, digits[1])
    assert noisy.manifest_hash in str(err.value) and other_noise.manifest_hash in str(err.value)
    other_seed = _run(tmp_path, seed=5)  # another seed has its own directory: a checkpoint copied there is refused
    other_seed.dir.mkdir(parents=True)
    shutil.copy(run.checkpoint, other_seed.checkpoint)
    with pytest.raises(ValueError, match=r"refusing to resume"):
        pretrain(other_seed, digits[0], noisy, digits[1])
    assert file_sha256(run.checkpoint) == before == file_sha256(other_seed.checkpoint)  # never overwritten
    assert not run.pretrain_summary.exists() and not other_seed.pretrain_summary.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(digits, noisy, tmp_path, damage):
    run = _run(tmp_path)
    pretrain(run, digits[0], noisy, digits[1], stop_after=1)
    raw = bytearray(run.checkpoint.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:  # a byte inside the stored weights: the zip still opens, the content hash does not match
        raw[len(raw) // 2] ^= 0x01
    run.checkpoint.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{run.checkpoint} (is damaged|does not match its content hash).*remove "
                                         f"{run.checkpoint} to restart pre-training from epoch 0"):
        pretrain(run, digits[0], noisy, digits[1])
    run.checkpoint.unlink()  # as the message says: the run restarts and ends as an uninterrupted one
    assert pretrain(run, digits[0], noisy, digits[1], stop_after=1)["finished"] is False


def test_finished_run_is_skipped_and_foreign_summary_refused(digits, noisy, straight):
    run, summary = straight
    stamp = run.pretrain_summary.stat().st_mtime_ns
    again = pretrain(run, digits[0], noisy, digits[1])
    assert again == json.loads(run.pretrain_summary.read_text()) and again["seconds"] == summary["seconds"]
    assert run.pretrain_summary.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="belongs to another run"):
        pretrain(Run(run.config.replace(epochs=3)), digits[0], noisy, digits[1])


# --- outputs ------------------------------------------------------------------------------------------------------

def test_run_files_history_and_loading(digits, noisy, straight):
    import pandas as pd

    run, summary = straight
    assert {p.name for p in run.dir.iterdir()} == {CHECKPOINT, BACKBONE, PRETRAIN_SUMMARY, HISTORY_CSV, HISTORY_NC}
    table = pd.read_csv(run.history_csv)
    assert list(table.columns) == list(HISTORY_FIELDS) and list(table["epoch"]) == [1, 2]
    ds = load_history(run)
    assert ds.sizes["epoch"] == 2 and ds.attrs["manifest_sha256"] == noisy.manifest_hash
    assert ds.attrs["checkpoint_sha256"] == summary["checkpoint_sha256"]
    assert json.loads(ds.attrs["config"]) == summary["config"] and summary["config"]["model"] == "resnet_tiny"
    assert ds.attrs["torch_version"] == str(torch.__version__) and ds.attrs["created"] and "versions" not in ds.attrs
    assert json.loads(ds.attrs["run_key"]) == summary["run_key"] and ds.attrs["memo_samples"] == 4096
    assert ds.attrs["seed"] == 0 and ds.attrs["noise_kind"] == "symmetric"
    assert load_history(run.dir).identical(ds)  # a Run or its directory
    for field in ("memo_noisy", "memo_clean", "test_acc", "train_acc_noisy"):
        assert ((0 <= table[field]) & (table[field] <= 1)).all()
    assert (table["memo_noisy"] + table["memo_clean"] <= 1 + 1e-9).all()  # a prediction is one class or the other
    assert summary["checkpoint_sha256"] == file_sha256(run.backbone)
    assert summary["manifest_sha256"] == noisy.manifest_hash and summary["config"]["lr"] == 0.1
    assert summary["seconds"] > 0 and summary["images_per_s"] > 0 and summary["device"].startswith("cpu")
    assert summary["images_seen"] == 2 * (N_TRAIN // 64) * 64
    model, info = load_pretrained(run)
    assert info == summary and not model.training and load_pretrained(run.dir)[1] == info
    x = digits[1].images[:4]
    assert model.pre_logits(x).shape == (4, info["model"]["num_features"])
    fig = plot_history(table)
    assert len(fig.axes) >= 3


def test_load_pretrained_refuses_changed_weights(digits, noisy, tmp_path):
    run = _run(tmp_path, epochs=1)
    pretrain(run, digits[0], noisy, digits[1])
    state = torch.load(run.backbone, weights_only=False)
    state["model"]["net.fc.bias"] += 1
    torch.save(state, run.backbone)
    with pytest.raises(ValueError, match="changed after the run"):
        load_pretrained(run)


def test_memorisation_subset_and_progress_bars(digits, noisy, tmp_path, monkeypatch, capsys):
    """More flipped samples than MEMO_SAMPLES: a fixed seeded subset is scored; bars (progress=True) work too."""
    import nmtune_lib.pretraining.recipe as R

    monkeypatch.setattr(R, "MEMO_SAMPLES", 16)
    index = R.memo_index(noisy.flipped, seed=0)
    assert len(index) == 16 and bool(noisy.flipped[index].all()) and torch.equal(index, R.memo_index(noisy.flipped, 0))
    summary = pretrain(_run(tmp_path, epochs=1, progress=True), digits[0], noisy, digits[1])
    assert 0 <= summary["memo_noisy"] <= 1 and summary["memo_noisy"] * 16 == round(summary["memo_noisy"] * 16)
    assert "epoch 1/1" in capsys.readouterr().out


def test_schedule_and_epoch_seeds():
    total = 100
    factors = [one_cycle(s, total) for s in range(total + 1)]
    assert factors[0] == 0 and max(factors) == pytest.approx(1.0) and factors[-1] == 0
    assert factors.index(max(factors)) == 20
    seeds = {epoch_seed(s, e, r) for s in range(3) for e in range(3) for r in range(2)}
    assert len(seeds) == 18


# --- learning -----------------------------------------------------------------------------------------------------

def test_learns_clean_digits_well_above_chance(tmp_path):
    """Can fail: one short epoch on 2,000 clean MNIST digits must beat 10 % chance by far."""
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    train = train.subset(stratified_subset(train.labels, 2000, 0))
    clean = inject_label_noise(train.labels, 0.0, num_classes=10, seed=0)
    summary = pretrain(_run(tmp_path, 0.0, train_subset=2000, epochs=2, batch_size=32, lr=0.1), train, clean, test)
    assert summary["final_test_acc"] > 0.7, summary["final_test_acc"]
    assert summary["memo_noisy"] is None  # nothing flipped: no memorisation rate


@needs_fmnist
def test_learns_fashion_mnist_subset(tmp_path):
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    train = train.subset(stratified_subset(train.labels, 2000, 0))
    clean = inject_label_noise(train.labels, 0.0, num_classes=10, seed=0)
    run = _run(tmp_path, 0.0, dataset="fashion_mnist", train_subset=2000, epochs=2, batch_size=32, lr=0.1)
    summary = pretrain(run, train, clean, test.subset(torch.arange(2000)))
    assert summary["final_test_acc"] > 0.6, summary["final_test_acc"]  # chance is 0.10


# --- bad input: clear errors before any training ------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the missing-CUDA error cannot occur")
def test_cuda_asked_for_but_absent(digits, noisy, tmp_path):
    with pytest.raises(ValueError, match=r"device='cuda'.*accepted here: 'auto', 'cpu'"):
        pretrain(_run(tmp_path, device="cuda"), digits[0], noisy, digits[1])
    assert not any(tmp_path.iterdir())


def test_batch_larger_than_dataset(digits, noisy, tmp_path):
    with pytest.raises(ValueError, match=rf"batch_size=1000 .* {N_TRAIN} training samples; accepted: 1 to {N_TRAIN}"):
        pretrain(_run(tmp_path, batch_size=1000), digits[0], noisy, digits[1])
    assert not any(tmp_path.iterdir())


def test_non_positive_epochs(digits, noisy, tmp_path):
    with pytest.raises(ValueError, match=r"epochs=0: expected a positive integer"):
        _config(epochs=0)  # the config itself refuses
    forged = _run(tmp_path)
    object.__setattr__(forged.config, "epochs", -1)  # bypassing validation: pretrain checks again
    with pytest.raises(ValueError, match=r"epochs=-1: expected a positive integer"):
        pretrain(forged, digits[0], noisy, digits[1])
    assert not any(tmp_path.iterdir())


def test_noisy_labels_of_other_length(digits, tmp_path):
    short = inject_label_noise(digits[0].labels[:-7], 0.2, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=rf"shape \({N_TRAIN - 7},\) .* {N_TRAIN} samples; accepted: a vector of len"):
        pretrain(_run(tmp_path), digits[0], short, digits[1])
    other = inject_label_noise(digits[0].labels.flip(0), 0.2, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="made for another training set"):
        pretrain(_run(tmp_path), digits[0], other, digits[1])
    assert not any(tmp_path.iterdir())


# --- entry points: command line, DDP ------------------------------------------------------------------------------

def test_command_line_single_process(tmp_path, capsys):
    args = ["--preset", "smoke", "--noise-ratio", "0.1", "--seed", "0", "--dataset", "mnist5k", "--device", "cpu",
            "--run-root", str(tmp_path), "--no-progress", "--set", "train_subset=256", "epochs=1", "batch_size=64",
            "num_threads=1"]
    assert main(args) == 0
    run = Run.of(StudyConfig.from_preset("smoke", dataset="mnist5k", run_root=str(tmp_path)), 0.1, 0)
    assert run.manifest.exists() and run.noisy_labels.exists() and run.pretrain_summary.exists()
    assert run.backbone.exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["world_size"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, train, test, noisy) -> None:
    """One rank: the same call a torchrun rank makes, but each rank is given its own run_root to see who writes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    run = _run(Path(root) / f"rank{rank}", 0.0, train_subset=len(train), epochs=2, batch_size=64, lr=0.2,
               num_threads=0)
    summary = pretrain(run, train, noisy, test)
    (Path(root) / f"result{rank}.json").write_text(json.dumps(summary))  # the test's own record, not the library's


def test_ddp_gloo_world_size_2_only_rank0_writes(digits, tmp_path):
    import torch.multiprocessing as mp

    train = digits[0].subset(torch.arange(256))
    clean = inject_label_noise(train.labels, 0.0, num_classes=10, seed=0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), train, digits[1], clean), nprocs=2, join=True)
    run = _run(tmp_path / "rank0", 0.0, train_subset=len(train), epochs=2, batch_size=64, lr=0.2, num_threads=0)
    assert {p.name for p in run.dir.iterdir()} == {CHECKPOINT, BACKBONE, PRETRAIN_SUMMARY, HISTORY_CSV, HISTORY_NC}
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["world_size"] == 2  # every rank returns rank 0's summary
    assert r0["images_seen"] == 2 * 4 * 64  # 2 epochs × 4 steps (128 per rank / 32 per rank) × global batch 64
    loss = [h["train_loss"] for h in read_checkpoint(run.checkpoint)["history"]]
    assert all(math.isfinite(v) for v in loss) and loss[1] < loss[0]
    assert r0["final_test_acc"] > 0.2  # it trains: chance is 0.1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs a machine of two or more cores and affinity masks (Linux)")
def test_all_cores_means_the_cores_this_process_may_use():
    """num_threads=0 follows the process's affinity mask (taskset, a Slurm cpuset, a pinned test worker), not the
    machine's core count: pinned to one core, a run uses one thread."""
    import subprocess
    import sys

    code = """if True:
        import os, torch
        from nmtune_lib.config import StudyConfig
        from nmtune_lib.pretraining.distributed import torch_threads
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        torch.set_num_threads(os.cpu_count())
        with torch_threads(torch.device("cpu"), StudyConfig(num_threads=0), 1) as threads:
            print(threads)
        """
    env = {k: v for k, v in os.environ.items() if k != "NMTUNE_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["1"]
