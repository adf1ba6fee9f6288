"""StudyConfig: presets, validation, coercion of papermill/YAML values, round trips."""
import pytest

from nmtune_lib.config import PRESETS, StudyConfig


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_and_round_trip_json_and_yaml(preset):
    cfg = StudyConfig.from_preset(preset)
    assert cfg.preset == preset
    assert StudyConfig.from_json(cfg.to_json()) == cfg
    assert StudyConfig.from_yaml(cfg.to_yaml()) == cfg


def test_default_grid_is_the_papers():
    cfg = StudyConfig.from_preset("default")
    assert cfg.noise_ratios == (0.0, 0.05, 0.1, 0.2, 0.3)
    assert len(cfg.seeds) >= 5


def test_default_head_protocol_is_the_reference_codes():
    cfg = StudyConfig.from_preset("default")
    assert cfg.view_crop_scale == (0.8, 1.0) and cfg.view_crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.head_epochs == 30 and cfg.head_batch_size == 64 and (cfg.lp_lr, cfg.mlp_lr) == (1e-2, 1e-3)
    assert cfg.protocols == ("reference", "matched") and cfg.lr_grid == (1e-3, 3e-3, 1e-2)
    assert len(cfg.reg_scales) >= 4 and 1.0 in cfg.reg_scales and cfg.single_lambda == 0.01


@pytest.mark.parametrize("key,value,accepted", [
    ("view_crop_scale", [0.9, 0.8], "0 < low <= high <= 1"),
    ("view_crop_scale", [0.5], "0 < low <= high <= 1"),
    ("view_interpolation", "area", "view_interpolation='area': expected one of bilinear, nearest, bicubic"),
    ("view_blur", -0.5, "view_blur=-0.5: expected a Gaussian sigma >= 0"),
    ("protocols", ["reference", "fair"], "reference, matched"),
    ("lr_grid", [], "non-empty"),
    ("holdout_fraction", 0.7, r"\(0, 0.5\)"),
    ("robustness", ["lr=0.1"], "head_epochs, views, head_mode"),
    ("robustness", ["views=1"], "valid value"),
])
def test_head_protocol_fields_are_checked(key, value, accepted):
    with pytest.raises(ValueError, match=accepted):
        StudyConfig.from_preset("smoke", **{key: value})


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=", ".join(PRESETS)):
        StudyConfig.from_preset("tiny")


def test_mistyped_key_raises_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'noise_ratios'"):
        StudyConfig.from_preset("smoke", noise_ratio=[0.1])


@pytest.mark.parametrize("key,value,accepted", [
    ("noise_ratios", [0.1, 1.0], r"\[0, 1\)"),
    ("noise_kind", "pairflip", "symmetric, asymmetric, instance"),
    ("epochs", 0, "positive integer"),
    ("device", "tpu", "auto, cpu, cuda"),
    ("methods", ["lp", "svm"], "lp, mlp, nmtune"),
    ("views", 1, ">= 2"),
    ("dataset", "cifar100", "fashion_mnist"),
    ("seeds", [0, 0], "distinct"),
    ("lr", "fast", "float"),
])
def test_bad_values_name_the_value_and_the_accepted_ones(key, value, accepted):
    with pytest.raises(ValueError, match=accepted) as err:
        StudyConfig.from_preset("smoke", **{key: value})
    assert key in str(err.value)


def test_papermill_and_yaml_strings_are_coerced():
    cfg = StudyConfig.from_preset("smoke", mlp_lr="1e-3", epochs="3", compile="true", seeds="0,1", noise_ratios=0.1)
    assert cfg.mlp_lr == 1e-3 and cfg.epochs == 3 and cfg.compile is True
    assert cfg.seeds == (0, 1) and cfg.noise_ratios == (0.1,)


def test_config_is_frozen():
    cfg = StudyConfig.from_preset("smoke")
    with pytest.raises(Exception):
        cfg.epochs = 5  # type: ignore[misc]
    assert cfg.replace(epochs=5).epochs == 5


def test_converged_is_the_default_study_with_a_pre_training_that_memorises():
    default, converged = StudyConfig.from_preset("default"), StudyConfig.from_preset("converged")
    changed = {k for k, v in converged.to_dict().items() if default.to_dict()[k] != v} - {"preset"}
    assert changed == {"train_subset", "epochs"}  # same model, grid, heads and protocols
    assert converged.epochs > default.epochs and 0 < converged.train_subset < 60_000
