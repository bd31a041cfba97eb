"""The engine's automatic choices (CPU here, GPUs described by fake device facts), the compile fallback, and
activation checkpointing being the same computation as the plain model."""

import argparse
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convcanon
from convcanon.train.config import TrainConfig, add_config_arguments, config_from_args, config_from_dict
from convcanon.train.engine import (
    FP32_MARGIN,
    PROBE_MAX_FLOP,
    CompiledWithFallback,
    DeviceFacts,
    StepShape,
    choose_amp,
    cpu_name,
    engine_for,
    measure_amp,
    resolve_engine,
)

H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
V100 = DeviceFacts("cuda", "Tesla V100-SXM2-16GB", (7, 0))
P100 = DeviceFacts("cuda", "Tesla P100-PCIE-16GB", (6, 0))
CPU = DeviceFacts("cpu", "some CPU")
CPU_BF16 = DeviceFacts("cpu", "a CPU with AVX512-BF16", cpu_bf16=True)


def _gpu(facts, **settings):
    return resolve_engine(device="cuda", facts=facts, **settings)


# ---- resolution rules


@pytest.mark.parametrize("facts", [CPU, CPU_BF16])
def test_cpu_auto_choices(facts):
    engine = resolve_engine(device="cpu", model=convcanon.create_model("resnet20"), facts=facts)
    # bf16 autocast where the CPU computes in bf16 natively, fp32 where it would be emulated (slower)
    assert engine.amp == ("bf16" if facts.cpu_bf16 else "off")
    assert ("--amp off" in engine.reasons["amp"]) == facts.cpu_bf16  # the way back to fp32 is named
    assert engine.channels_last
    assert not engine.compile
    assert not engine.cudnn_benchmark
    assert not engine.activation_checkpointing


@pytest.mark.parametrize("facts", [CPU, H100])
def test_local_response_norm_keeps_nchw(facts):
    # The paper AlexNet's LRN has no NHWC kernel (measured 0.9x on CPU); the torchvision-layout AlexNet has no LRN.
    with torch.device("meta"):
        paper, owt = convcanon.create_model("alexnet"), convcanon.create_model("alexnet_owt")
    assert not resolve_engine(device=facts.type, model=paper, facts=facts).channels_last
    assert resolve_engine(device=facts.type, model=owt, facts=facts).channels_last
    assert resolve_engine(device=facts.type, model=paper, facts=facts, channels_last=True).channels_last


def test_gpu_with_bf16_gets_the_whole_fast_path():
    engine = _gpu(H100)
    assert (engine.amp, engine.channels_last, engine.compile, engine.cudnn_benchmark) == ("bf16", True, True, True)
    assert "H100" in engine.reasons["amp"]


def test_older_gpus_get_fp32_and_no_triton_below_volta():
    volta = _gpu(V100)
    assert (volta.amp, volta.compile) == ("off", True)  # capability 7.0: no native bf16, Triton works
    pascal = _gpu(P100)
    assert (pascal.amp, pascal.compile) == ("off", False)
    assert "Triton" in pascal.reasons["compile"]


def test_every_choice_is_overridable():
    engine = _gpu(H100, amp="off", channels_last=False, compile=False, deterministic=True)
    assert (engine.amp, engine.channels_last, engine.compile, engine.cudnn_benchmark) == ("off", False, False, False)
    assert engine.reasons["channels_last"] == engine.reasons["compile"] == "as asked"
    forced = resolve_engine(device="cpu", facts=CPU, amp="bf16", channels_last=False, compile=True)
    assert (forced.amp, forced.channels_last, forced.compile) == ("bf16", False, True)


def test_activation_checkpointing_turns_auto_compile_off_but_not_an_explicit_one():
    assert not _gpu(H100, activation_checkpointing=True).compile
    assert _gpu(H100, activation_checkpointing=True, compile=True).compile


def test_fp16_on_cpu_is_an_error_naming_the_alternative():
    with pytest.raises(ValueError, match="--amp bf16"):
        resolve_engine(device="cpu", amp="fp16", facts=CPU)


def test_describe_prints_each_choice_with_its_reason_and_flag():
    lines = resolve_engine(device="cpu", facts=CPU).describe()
    text = "\n".join(lines)
    for label in ("amp", "channels-last", "compile", "cudnn.benchmark", "activation ckpt", "optimizer"):
        assert label in text
    assert "oneDNN" in text and "--[no-]channels-last" in text


def test_real_device_facts_on_this_machine():
    facts = DeviceFacts.of("cpu")
    assert facts.type == "cpu" and facts.capability is None
    assert facts.bf16 == facts.cpu_bf16  # on a CPU, native bf16 means AVX512-BF16 or AMX in /proc/cpuinfo


# ---- bf16 or fp32 on a CPU with native bf16: measured on the step


def test_the_measured_rule_keeps_bf16_unless_fp32_is_clearly_faster():
    assert choose_amp(0.100, 0.100)[0] == "bf16"  # a tie: the established default
    assert choose_amp(0.100, 0.100 * FP32_MARGIN)[0] == "bf16"  # within the margin
    amp, why = choose_amp(0.100, 0.100 * FP32_MARGIN * 1.01)
    assert amp == "off" and "fp32 100 ms" in why and "faster here" in why
    assert choose_amp(0.300, 0.100)[0] == "bf16"


def test_the_measurement_leaves_the_model_its_gradients_and_every_generator_as_they_were():
    torch.manual_seed(3)
    model = convcanon.create_model("resnet20", num_classes=10, dropout=0.5).train()
    before = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()
    amp, why = measure_amp(model, StepShape(8, 3, 8, 10, 1e6), channels_last=True)
    assert amp in ("off", "bf16") and "measured on this step" in why
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch norm's statistics too
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training


def test_a_large_step_keeps_bf16_without_running_anything():
    class Untouchable(nn.Module):
        def forward(self, x):
            raise AssertionError("a step above PROBE_MAX_FLOP must not be timed")

    amp, why = measure_amp(Untouchable(), StepShape(256, 3, 224, 1000, 2 * PROBE_MAX_FLOP), channels_last=True)
    assert amp == "bf16" and "GFLOP" in why


def test_every_process_decides_from_the_same_summed_times():
    seen = []

    def agree(times):  # another process measured bf16 as far slower: the sum decides, on every process alike
        seen.append(times.clone())
        return times + torch.tensor([0.0, 10.0], dtype=times.dtype)

    amp, _ = measure_amp(convcanon.create_model("resnet20", num_classes=10), StepShape(4, 3, 8, 10, 1e6), True, agree)
    assert amp == "off" and len(seen) == 1 and seen[0].shape == (2,)


@pytest.mark.parametrize("facts", [CPU, CPU_BF16])
def test_resolve_engine_measures_only_on_a_bf16_cpu_with_auto(facts):
    model = convcanon.create_model("resnet20", num_classes=10)
    shape = StepShape(4, 3, 8, 10, 1e6)
    engine = resolve_engine(device="cpu", model=model, facts=facts, step_shape=shape)
    assert ("measured" in engine.reasons["amp"]) == facts.cpu_bf16 == engine.amp_measured
    pinned = resolve_engine(device="cpu", model=model, facts=facts, step_shape=shape, amp="bf16")
    assert pinned.amp == "bf16" and pinned.reasons["amp"] == "as asked" and not pinned.amp_measured


def test_a_run_pins_the_measured_choice_in_its_config(tmp_path, monkeypatch):
    """A resume reads config.yaml: the measured choice is written there, so that it computes as the run began."""
    import io

    from convcanon.train import engine as engine_lib
    from convcanon.train.config import load_yaml
    from convcanon.train.run import train

    monkeypatch.setattr(engine_lib.DeviceFacts, "of", classmethod(lambda cls, device: CPU_BF16))
    monkeypatch.setattr(engine_lib, "choose_amp", lambda fp32, bf16: ("off", "auto: measured on this step: test"))
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, max_steps=2, batch_size=32, progress=False)
    train(cfg, out_stream=io.StringIO())
    assert load_yaml(tmp_path / "run" / "config.yaml")["amp"] == "off"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["amp"] == "off" and "measured" in record["engine"]["reasons"]["amp"]
    # the measurement touched nothing: the same run with --amp off given ends with the same weights, bit for bit
    train(TrainConfig(out=str(tmp_path / "given"), epochs=1, max_steps=2, batch_size=32, progress=False, amp="off"),
          out_stream=io.StringIO())
    from safetensors.torch import load_file

    measured, given = (load_file(tmp_path / name / "model.safetensors") for name in ("run", "given"))
    assert measured.keys() == given.keys() and all(torch.equal(measured[k], given[k]) for k in measured)


# ---- config: None = auto, flags on top


def _args(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--channels-last"], True),
                                                 (["--no-channels-last"], False)])
def test_channels_last_flag_is_tri_state(argv, expected):
    cfg, _ = config_from_args(_args(argv))
    assert cfg.channels_last is expected
    assert cfg.compile is None


def test_engine_for_reads_the_train_config():
    cfg = config_from_dict({"channels_last": False, "compile": True, "activation_checkpointing": True})
    engine = engine_for(cfg, torch.device("cpu"), facts=CPU)
    assert (engine.channels_last, engine.compile, engine.activation_checkpointing) == (False, True, True)
    with pytest.raises(ValueError, match="compile must be true or false"):
        config_from_dict({"compile": "yes"})


# ---- compile fallback


class _Failing:
    """Stands in for the compiled module: compiling fails at the first call, as it does when e.g. no C++ compiler or
    Triton is installed."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        from torch._dynamo.exc import TorchDynamoException

        self.calls += 1
        raise TorchDynamoException("no working C++ compiler found")


def test_compile_failure_falls_back_to_eager_with_one_message(monkeypatch):
    failing = _Failing()
    monkeypatch.setattr(torch, "compile", lambda module, **kw: failing)
    said = []
    net = nn.Linear(3, 2)
    wrapped = CompiledWithFallback(net, said.append)
    x = torch.randn(4, 3)
    for _ in range(3):
        torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)  # the same module runs: exactly equal
    assert failing.calls == 1  # after the failure the compiled path is not tried again
    assert len(said) == 1 and "C++ compiler" in said[0] and "eager" in said[0]
    assert "no working C++ compiler" in wrapped.failed
    assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]  # no duplicate parameters


def test_errors_that_are_not_compile_failures_propagate(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("wrong input shape")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: broken)
    wrapped = CompiledWithFallback(nn.Linear(3, 2), lambda msg: None)
    with pytest.raises(ValueError, match="wrong input shape"):
        wrapped(torch.randn(1, 3))
    assert wrapped.failed is None


@pytest.mark.slow
def test_real_compile_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    said = []
    wrapped = CompiledWithFallback(copy.deepcopy(net), said.append)
    x = torch.randn(2, 1, 8, 8)
    # 1e-5: inductor fuses and reorders the float32 reductions of batch norm; eager and compiled round differently.
    torch.testing.assert_close(wrapped(x), net(x), rtol=1e-5, atol=1e-5)
    assert wrapped.failed is None, said


# ---- activation checkpointing

# One model per family, at a small input side it accepts (GoogLeNet with its aux heads, which checkpoint too).
CHECKPOINTED = {"resnet20": 8, "resnet18": 32, "vgg16_bn_cifar": 32, "alexnet_cifar": 15, "googlenet_cifar": 8}


def _checkpointed_twin(name):
    torch.manual_seed(0)
    options = {"aux_heads": True} if name.startswith("googlenet") else {}
    plain = convcanon.create_model(name, num_classes=10, **options)
    ckpt = copy.deepcopy(plain)
    # Through the engine, as train does; fp32 and the default layout, so both models compute the same floats.
    engine = resolve_engine(device="cpu", amp="off", channels_last=False, activation_checkpointing=True)
    assert engine.prepare_model(ckpt) is ckpt
    return plain, ckpt


def _step(model, x, y):
    """One training step; returns the gradients and the bytes of the activations autograd kept for backward."""
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in params:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    torch.manual_seed(1)  # the same dropout masks in both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.forward_with_aux(x)
        loss = F.cross_entropy(out.logits, y) + 0.3 * sum(F.cross_entropy(a, y) for a in out.aux)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved.values())


@pytest.mark.parametrize("name", CHECKPOINTED)
def test_checkpointing_gives_the_plain_models_gradients_and_statistics_in_less_memory(name):
    plain, ckpt = _checkpointed_twin(name)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    assert [type(m) for m in ckpt.modules()] == [type(m) for m in plain.modules()]  # no class swapped, no wrapper
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # same names: checkpoints stay loadable

    recomputed = []
    second_block = ckpt.feature_blocks()[1][1]
    first_conv = next(m for m in second_block.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda *a: recomputed.append(1))
    side = CHECKPOINTED[name]
    x, y = torch.randn(2, 3, side, side), torch.randint(0, 10, (2,))
    (g_plain, kept_plain), (g_ckpt, kept_ckpt) = _step(plain, x, y), _step(ckpt, x, y)
    assert len(recomputed) == 2  # forward, then again in backward: the activations were not kept
    # What stays is about one input per block, a fraction of what the plain model keeps.
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)
    # Exact: the recomputation runs the same kernels on the same inputs in the same order, so every float is equal.
    for key in g_plain:
        torch.testing.assert_close(g_ckpt[key], g_plain[key], rtol=0, atol=0, msg=key)
    # Batch norm updated its running statistics once, not twice (the recompute leaves them alone).
    for (key, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)


def test_checkpointing_is_skipped_without_grad_and_refused_without_blocks():
    model = convcanon.create_model("resnet20", num_classes=10)
    model.set_grad_checkpointing(True)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    engine = resolve_engine(device="cpu", activation_checkpointing=True)
    with pytest.raises(ValueError, match="no set_grad_checkpointing"):
        engine.prepare_model(nn.Sequential(nn.Conv2d(3, 3, 3)))


# ---- the training loop applies and records the engine


def test_train_prints_and_records_the_engine(tmp_path):
    import io

    from convcanon.train.run import train

    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, max_steps=2, batch_size=32, progress=False,
                      channels_last=False, activation_checkpointing=True)
    out = io.StringIO()
    train(cfg, out_stream=out)
    text = out.getvalue()
    assert "channels-last    off     as asked" in text
    assert "activation ckpt  on" in text
    engine = json.loads((tmp_path / "run" / "run.json").read_text())["engine"]
    assert engine["channels_last"] is False and engine["activation_checkpointing"] is True
    assert engine["compile"] is False  # auto, off on CPU


# ---- on a real GPU (skipped without one; scripts/gpu_check.sh runs them)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_gpu_resolution_and_checkpointing_on_it():
    facts = DeviceFacts.of("cuda")
    engine = resolve_engine(device="cuda")
    assert engine.amp == ("bf16" if facts.capability >= (8, 0) else "off")
    assert engine.channels_last and engine.cudnn_benchmark
    torch.manual_seed(0)
    plain = convcanon.create_model("resnet20", num_classes=10).cuda()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 16, 16, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
    (g_plain, _), (g_ckpt, _) = _step(plain, x, y), _step(ckpt, x, y)
    for key in g_plain:
        # 1e-5: cuDNN may pick another algorithm for the recomputation than for the first forward (it is not bound to
        # the same one across calls unless deterministic), so the gradients agree to float32 rounding, not bitwise.
        torch.testing.assert_close(g_ckpt[key], g_plain[key], rtol=1e-5, atol=1e-5, msg=key)


def test_the_probes_times_are_kept_for_the_same_step_on_this_machine(tmp_path):
    from convcanon.train import amp_probe

    passes = []
    model = convcanon.create_model("resnet20", num_classes=10)
    model.register_forward_hook(lambda *_: passes.append(1))  # the probe's copy of the model keeps the hook
    shape = StepShape(4, 3, 8, 10, 1e6)
    first, why = measure_amp(model, shape, channels_last=True, keep=True)
    assert len(passes) == 6 and "kept in" not in why  # measured: a warm-up and two timed passes of each precision
    assert amp_probe.probe_path().is_file()
    again, why_again = measure_amp(model, shape, channels_last=True, keep=True)
    assert len(passes) == 6 and again == first  # read back, not measured; the same rule decides
    assert "measured on this step on 20" in why_again and str(amp_probe.probe_path()) in why_again
    measure_amp(model, StepShape(8, 3, 8, 10, 1e6), channels_last=True, keep=True)  # another batch: measured
    assert len(passes) == 12
    measure_amp(model, shape, channels_last=False, keep=True)  # another memory format: measured
    assert len(passes) == 18
    model.fc.weight.requires_grad_(False)  # another backward pass (a frozen layer): measured
    measure_amp(model, shape, channels_last=True, keep=True)
    assert len(passes) == 24
    measure_amp(model, shape, channels_last=True)  # not asked to keep: measured, the file not read
    assert len(passes) == 30


def test_a_damaged_or_unwritable_probe_file_is_measured_around(tmp_path, monkeypatch):
    from convcanon.train import amp_probe

    model, shape = convcanon.create_model("resnet20", num_classes=10), StepShape(4, 3, 8, 10, 1e6)
    path = amp_probe.probe_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    amp, why = measure_amp(model, shape, channels_last=True, keep=True)
    assert amp in ("off", "bf16") and json.loads(path.read_text())  # measured, and the file rewritten whole
    key = amp_probe.probe_key(model, shape, True, False, cpu_name())
    path.write_text(json.dumps({key: {"fp32": "x"}}))
    assert "kept in" not in measure_amp(model, shape, channels_last=True, keep=True)[1]  # a bad entry: measured
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("a file where the folder would be")
    assert measure_amp(model, shape, channels_last=True, keep=True)[0] in ("off", "bf16")  # nothing kept, no error
    entries = {str(i): {"fp32": 1.0, "bf16": 1.0, "when": "then"} for i in range(amp_probe.MAX_ENTRIES + 5)}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "many"))
    amp_probe.remember("new", 0.1, 0.2)
    amp_probe.probe_path().write_text(json.dumps(entries))
    amp_probe.remember("newer", 0.1, 0.2)
    kept = json.loads(amp_probe.probe_path().read_text())
    assert len(kept) == amp_probe.MAX_ENTRIES and "newer" in kept and "0" not in kept  # the oldest went first
