"""Config precedence (defaults < YAML < flags), and bad settings caught before any work with the key named."""

import argparse

import pytest

from convcanon.train.config import (
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    parse_model_options,
)


def _args(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: plain20\nepochs: 7\nlr: 0.05\nmodel_options: {activation: tanh}\n")
    cfg, given = config_from_args(_args(["--config", str(path), "--epochs", "3", "--model-option", "residual=false"]))
    assert cfg.model == "plain20"  # from YAML
    assert cfg.epochs == 3  # flag beats YAML
    assert cfg.lr == 0.05
    assert cfg.batch_size == TrainConfig().batch_size  # default
    assert cfg.model_options == {"activation": "tanh", "residual": False}
    assert {"model", "epochs", "lr", "model_options"} <= given


def test_unknown_key_in_yaml_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="'epoch'.*epochs"):
        config_from_args(_args(["--config", str(path)]))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"epochs": "ten"}, "epochs must be an integer"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
        ({"lr": -0.1}, "--lr must be a finite number > 0"),
        ({"warmup_epochs": 20, "epochs": 5}, "--warmup-epochs"),
        ({"nesterov": "yes"}, "nesterov must be true or false"),
        ({"milestones": [30, 10], "schedule": "step"}, "--milestones must be increasing epochs >= 0; got 30 10"),
    ],
)
def test_bad_values_are_errors(values, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(values)


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("epochs", 0, "an integer >= 1"),
        ("keep_checkpoints", 0, "an integer >= 1"),
        ("log_every", 0, "an integer >= 1"),
        ("max_steps", -1, "an integer >= 0"),
        ("checkpoint_every", -5, "an integer >= 0"),
        ("workers", -1, "an integer >= 0"),
        ("seed", -1, r"an integer in \[0, 2\*\*63\)"),
        ("image_size", 0, "a side in pixels from 1 to 4096"),
        ("image_size", 22400, "a side in pixels from 1 to 4096"),
        ("lr", float("inf"), "a finite number > 0"),
        ("momentum", 1.0, r"a number in \[0, 1\)"),
        ("label_smoothing", 1.0, r"a number in \[0, 1\)"),
        ("gamma", 0.0, r"a factor in \(0, 1\]"),
        ("gamma", float("nan"), r"a factor in \(0, 1\]"),
        ("weight_decay", float("nan"), "a finite number >= 0"),
        ("grad_clip", -1.0, "a finite number >= 0"),
        ("dist_timeout", float("inf"), "a number of seconds > 0"),
        ("milestones", [-10, 20], "increasing epochs >= 0"),
        ("pipeline_split", [0, 3], "layers per stage, each >= 1"),
    ],
)
def test_every_numeric_range_names_its_flag_and_range(key, value, valid):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(ValueError, match=f"command line: {flag} must be {valid}; got"):
        config_from_dict({key: value}, where="command line")


def test_augmentation_flags_take_timms_forms(tmp_path):
    cfg, _ = config_from_args(_args(["--hflip", "0", "--scale", "0.08", "1", "--ratio", "0.75", "1.333", "--aa",
                                     "trivialaugment", "--reprob", "0.25", "--mean", "0.5", "--std", "0.25",
                                     "--train-crop-size", "176", "--val-resize-size", "232", "--val-crop-size", "224",
                                     "--interpolation", "bicubic", "--ra-reps", "4", "--data-cache", "stream"]))
    assert (cfg.hflip, cfg.scale, cfg.ratio, cfg.aa, cfg.reprob) == (0.0, [0.08, 1.0], [0.75, 1.333],
                                                                     "trivialaugment", 0.25)
    assert (cfg.mean, cfg.std, cfg.train_crop_size, cfg.val_resize_size, cfg.val_crop_size) == (
        [0.5], [0.25], 176, 232, 224)
    assert (cfg.interpolation, cfg.ra_reps, cfg.data_cache) == ("bicubic", 4, "stream")
    path = tmp_path / "c.yaml"
    path.write_text("scale: [0.35, 1]\naa: randaugment\n")
    assert config_from_args(_args(["--config", str(path)]))[0].scale == [0.35, 1.0]
    with pytest.raises(SystemExit):
        _args(["--aa", "augmix"])  # not a policy: argparse lists the choices


def test_model_option_values_are_typed():
    assert parse_model_options(["residual=false", "dropout=0.25", "activation=tanh", "width=32"]) == {
        "residual": False, "dropout": 0.25, "activation": "tanh", "width": 32,
    }  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["residual"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config_from_args(_args(["--config", str(tmp_path / "nope.yaml")]))


# Keys of the mixing and weight-average work (issue 15, items 2-3) that recipes already use; a key here that this
# branch's TrainConfig lacks is left out of the check until that work is merged (then it is checked like the rest).
ARRIVING_KEYS = frozenset({"mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "model_ema", "model_ema_decay",
                           "model_ema_steps"})


def test_every_recipe_loads_and_is_headed_by_command_expected_hardware():
    import dataclasses
    from pathlib import Path

    import convcanon
    from convcanon.train.config import load_yaml

    known = {f.name for f in dataclasses.fields(TrainConfig)}

    recipes = sorted(Path(__file__).resolve().parents[2].joinpath("experiments").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        header = path.read_text().split("\n\n")[0]
        for word in ("# command:", "# expected:", "# hardware:", "estimate"):
            assert word in path.read_text(), f"{path.name} lacks {word!r}"
        values = {k: v for k, v in load_yaml(path).items() if k in known or k not in ARRIVING_KEYS}
        cfg = config_from_dict(values, where=str(path))
        assert cfg.model in convcanon.list_models(), path.name
        assert header


def test_the_main_job_recipe_file_is_the_defaults_written_out():
    """experiments/digits_resnet20.yaml says it is `convcanon train`'s defaults: what it sets resolves to what the
    defaults resolve to (augmentation, label smoothing and the average are auto choices for the digits)."""
    from pathlib import Path

    from convcanon.data import open_data
    from convcanon.data.recipe import AugmentOptions
    from convcanon.train.config import load_yaml, to_dict
    from convcanon.train.ema import resolve_model_ema
    from convcanon.train.task import resolve_label_smoothing

    values = load_yaml(Path(__file__).resolve().parents[2] / "experiments" / "digits_resnet20.yaml")
    written, default = config_from_dict(values, where="digits_resnet20.yaml"), TrainConfig()

    def recipe(cfg):
        return open_data(cfg.data, augment=AugmentOptions.from_mapping(to_dict(cfg))).augment.recipe

    assert recipe(written) == recipe(default)
    assert resolve_label_smoothing(written)[0] == resolve_label_smoothing(default)[0]
    assert resolve_model_ema(written)[0] == resolve_model_ema(default)[0]
    auto = {"scale", "ratio", "hflip", "pad", "label_smoothing", "model_ema"}
    assert {k: getattr(written, k) for k in values if k not in auto} == {k: getattr(default, k) for k in values
                                                                       if k not in auto}
