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


def _options(command: str) -> dict[str, object]:
    """Option string -> argparse action of ``convcanon COMMAND``."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {name: action for action in sub._actions for name in action.option_strings}


SHARED = {  # the flags each command shares with train
    "eval": ("--data", "--image-size", "--batch-size", "--amp", "--device"),
    "bench": ("--model", "--model-option", "--batch-size", "--data", "--image-size", "--workers", "--decode", "--amp",
              "--channels-last", "--compile", "--deterministic", "--device", "--activation-checkpointing"),
    "estimate": ("--model", "--model-option", "--data", "--image-size", "--batch-size", "--amp", "--device",
                 "--channels-last", "--compile", "--optimizer"),
    "experiment": ("--device",),
    "report": ("--device",),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(SHARED))
def test_a_shared_flag_means_the_same_in_every_command(command):
    train, other = _options("train"), _options(command)
    for flag in SHARED[command]:
        ours, theirs = other[flag], train[flag]
        assert ours.dest == theirs.dest and ours.type == theirs.type and type(ours) is type(theirs), flag
        assert set(theirs.choices or ()) <= set(ours.choices or ()), flag
        meaning = theirs.help.split(" (default:")[0]
        assert ours.help.startswith(meaning), (flag, ours.help)


def test_bench_keeps_its_defaults_and_says_so(capsys):
    bench = _options("bench")
    assert (bench["--model"].default, bench["--batch-size"].default) == ("resnet50", 32)
    assert "train's is resnet20" in bench["--model"].help and "train's is 64" in bench["--batch-size"].help


def test_estimate_batch_is_per_device_and_amp_is_precision(capsys):
    import json

    def row(*argv):
        assert main(["estimate", "--model", "resnet50", "--device", "a100", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)[0]

    eight = row("--devices", "8", "--batch-size", "32")
    assert (eight["per_device_batch"], eight["global_batch"]) == (32, 256)  # as in train: per device
    assert row("--devices", "8", "--global-batch", "256") == eight
    assert row("--amp", "bf16") == row("--precision", "bf16") == row()  # auto is bf16 on an A100, as train's engine
    assert row("--amp", "off")["precision"] == row("--amp", "fp32")["precision"] == "fp32"
    assert main(["estimate", "--model", "resnet50", "--device", "a100", "--batch-size", "32", "--global-batch",
                 "256"]) == 2  # fmt: skip
    assert "not both" in capsys.readouterr().err


def test_models_family_takes_a_pattern_and_names_the_families_when_unknown(capsys):
    import json

    assert main(["models", "--family", "vgg*_bn", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == {f"vgg{d}_bn" for d in (11, 13, 16, 19)}
    assert main(["models", "--family", "resnets"]) == 2
    assert "unknown model family 'resnets'; families: alexnet, googlenet, resnet, resnet_cifar, vgg" in (
        capsys.readouterr().err
    )


def test_the_entry_points_quick_exit_keeps_what_an_exit_owes(tmp_path):
    # exit_now skips the interpreter's teardown (about a second with torch._dynamo loaded) but not the exit's duties:
    # a thread that is not a daemon finishes, exit handlers run after it, buffered output reaches a pipe, and the code
    # is the command's.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from convcanon.cli import exit_now
        atexit.register(lambda: print("handler", open({str(tmp_path / "t")!r}).read()))
        def late():
            time.sleep(0.3)
            open({str(tmp_path / "t")!r}, "w").write("thread done")
        threading.Thread(target=late).start()
        sys.stdout.write("buffered, no newline; ")
        exit_now(3)
        print("never")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newline; handler thread done\n"


def test_python_dash_m_convcanon_ends_with_the_commands_code(tmp_path):
    import subprocess
    import sys

    # (the runs of tests/distributed and tests/adversarial end through it with 0 and their own codes too)
    bad = subprocess.run([sys.executable, "-m", "convcanon", "train", "--model", "resnet21", "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown model 'resnet21'" in bad.stderr
