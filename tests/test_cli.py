"""The command line: every subcommand documents itself with examples, and bad input is one clear line, exit code 2."""

from __future__ import annotations

import pickle

import pytest

from convcanon.cli import COMMANDS, build_parser, main


def test_every_documented_subcommand_is_present():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert {"models", "train", "eval", "scan", "estimate"} <= set(subparsers.choices)
    assert set(subparsers.choices) <= set(COMMANDS)


@pytest.mark.parametrize("command", ["models", "train", "eval", "scan", "estimate"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_unknown_model_is_one_line_naming_the_closest(capsys, tmp_path):
    assert main(["train", "--model", "resnet21", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet21'" in err and "resnet20" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_bad_model_option_is_refused_before_work(capsys, tmp_path):
    code = main(["train", "--model-option", "residul=false", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert "valid options" in capsys.readouterr().err


def test_bad_flag_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--amp", "fp8"])
    assert done.value.code == 2
    assert "--amp" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/convcanon-evil-marker",))


def test_eval_refuses_a_malicious_pickle(tmp_path, capsys):
    import os

    marker = "/tmp/convcanon-evil-marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": _Evil()}))
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_models_json_for_one_family(capsys):
    import json

    assert main(["models", "--family", "resnet_cifar", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {f"{k}{d}" for k in ("resnet", "plain") for d in (20, 32, 44, 56, 110)}
    assert {r["params"] for r in rows if r["name"].endswith("56")} == {853_018}


def test_models_family_takes_a_pattern_and_names_the_families_when_unknown(capsys):
    import json

    assert main(["models", "--family", "vgg*_bn", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == {f"vgg{d}_bn" for d in (11, 13, 16, 19)}
    assert main(["models", "--family", "resnets"]) == 2
    assert "unknown model family 'resnets'; families: alexnet, googlenet, resnet, resnet_cifar, vgg" in (
        capsys.readouterr().err
    )
