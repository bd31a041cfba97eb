"""Convolutions that cover their input map, computed as one matrix product (train/small_maps.py): which ones qualify,
that the result and every gradient are the convolution's, that the engine applies it where it says, and that a
training step with it is the step without it, to rounding, and repeats bit for bit."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convcanon
from convcanon.train import small_maps
from convcanon.train.config import TrainConfig
from convcanon.train.engine import DeviceFacts, resolve_engine
from convcanon.train.small_maps import SmallMapConvolutions, covering_plan, whole_map_conv2d
from convcanon.train.step import build_step

H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", (9, 0))

# (input N, C, H, W), (weight Co, Ci, kh, kw), stride, padding: every output position sees every input position.
# With each, the kernel tap (ky * kw + kx) joining each (output, input) pair, outputs outer, worked out by hand.
COVERING = [
    ((4, 6, 1, 1), (5, 6, 3, 3), (1, 1), (1, 1)),  # ResNet's last stage at 32 px: only the centre tap meets data
    ((4, 6, 2, 2), (5, 6, 3, 3), (1, 1), (1, 1)),  # the stage before: each tap joins several position pairs
    ((4, 6, 2, 2), (5, 6, 3, 3), (2, 2), (1, 1)),  # the strided first convolution of the last stage
    ((4, 6, 1, 1), (5, 6, 1, 1), (1, 1), (0, 0)),  # a 1x1 convolution on a 1x1 map: a linear layer
    ((3, 4, 1, 2), (5, 4, 1, 3), (1, 1), (0, 1)),  # rectangular map and kernel
]
PAIR_TAPS = [
    [4],
    [4, 5, 7, 8, 3, 4, 6, 7, 1, 2, 4, 5, 0, 1, 3, 4],  # output (0,0) sees input (0,0) through the centre, ...
    [4, 5, 7, 8],
    [0],
    [1, 2, 0, 1],
]
NOT_COVERING = [
    ((2, 3, 4, 4), (5, 3, 3, 3), (1, 1), (1, 1)),  # a corner output does not see the far corner
    ((2, 3, 2, 2), (5, 3, 1, 1), (2, 2), (0, 0)),  # the 1x1 strided shortcut sees one position of four
    ((2, 3, 2, 3), (5, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 3, 2, 2), (5, 3, 3, 3), (1, 1), (2, 2)),  # the outer outputs see only a row of the input
]


def _plan(xs, ws, stride, padding):
    return covering_plan(xs[2], xs[3], ws[2], ws[3], *stride, *padding)


@pytest.mark.parametrize("xs, ws, stride, padding, taps", [(*case, taps) for case, taps in zip(COVERING, PAIR_TAPS)])
def test_covering_convolutions_have_a_plan(xs, ws, stride, padding, taps):
    plan = _plan(xs, ws, stride, padding)
    assert plan is not None
    assert [plan.used[p].item() for p in plan.pos] == taps
    assert plan.used.tolist() == list(dict.fromkeys(taps))  # each used tap once, in order of first use
    assert plan.unique == (len(set(taps)) == len(taps))
    if plan.unique:
        assert plan.pos.tolist() == list(range(len(taps)))


@pytest.mark.parametrize("xs, ws, stride, padding", NOT_COVERING)
def test_other_convolutions_have_none_and_run_as_convolutions(xs, ws, stride, padding):
    assert _plan(xs, ws, stride, padding) is None
    assert whole_map_conv2d(torch.randn(xs), torch.randn(ws), None, stride, padding) is None


def test_unsupported_arguments_are_left_to_the_convolution():
    x, w = torch.randn(2, 4, 1, 1), torch.randn(4, 4, 3, 3)
    assert whole_map_conv2d(x, w, None, 1, 1) is not None
    assert whole_map_conv2d(x, w, None, 1, "same") is None  # string padding
    assert whole_map_conv2d(x, w, None, 1, 1, 2) is None  # dilation
    assert whole_map_conv2d(x, torch.randn(4, 2, 3, 3), None, 1, 1, 1, 2) is None  # groups
    assert whole_map_conv2d(x[0], w, None, 1, 1) is None  # an unbatched input


def _float64_inputs(xs, ws, bias, channels_last):
    """A generator, the memory format, and float64 input, weight and bias (or None) needing gradients."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(xs, dtype=torch.float64, generator=g).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(ws, dtype=torch.float64, generator=g).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(ws[0], dtype=torch.float64, generator=g).requires_grad_() if bias else None
    return g, fmt, x, w, b


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("xs, ws, stride, padding", COVERING)
def test_equals_the_convolution_in_float64(xs, ws, stride, padding, bias, channels_last):
    # The same products summed in another order: float64 rounding (1e-16 relative) over at most 54 terms of size ~1
    # bounds the difference far below 1e-12; a wrong tap, layout or sum would be off by order 1.
    g, fmt, x, w, b = _float64_inputs(xs, ws, bias, channels_last)
    inputs = [x, w] + ([b] if bias else [])
    want = F.conv2d(x, w, b, stride, padding)
    got = whole_map_conv2d(x, w, b, stride, padding)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    upstream = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for mine, theirs in zip(torch.autograd.grad(got, inputs, upstream), torch.autograd.grad(want, inputs, upstream)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
        assert mine.shape == theirs.shape


def test_taps_that_only_meet_padding_get_exactly_zero_gradient():
    x = torch.randn(8, 16, 1, 1)
    w = torch.randn(32, 16, 3, 3, requires_grad=True)
    whole_map_conv2d(x, w, None, 1, 1).square().sum().backward()
    outer = w.grad.clone()
    outer[:, :, 1, 1] = 0
    assert torch.count_nonzero(outer) == 0 and torch.count_nonzero(w.grad[:, :, 1, 1]) > 0


def test_float32_and_channels_last_outputs():
    # float32 at ResNet-18's own sizes: 2304 terms per sum; fp32's 6e-8 unit roundoff times a random-walk growth of
    # sqrt(2304) = 48 gives ~3e-6 of the output's scale, so 2e-5 leaves a margin and still catches any real error.
    x = torch.randn(16, 256, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    got, want = whole_map_conv2d(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    scale = want.abs().max()
    torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=2e-5)
    gx, gw = torch.autograd.grad(got.sum(), [x, w])
    ex, ew = torch.autograd.grad(want.sum(), [x, w])
    torch.testing.assert_close(gx / ex.abs().max(), ex / ex.abs().max(), rtol=0, atol=2e-5)
    torch.testing.assert_close(gw / ew.abs().max(), ew / ew.abs().max(), rtol=0, atol=2e-5)
    assert gw.is_contiguous(memory_format=torch.channels_last)


def test_under_bf16_autocast_it_computes_in_bf16_as_the_convolution():
    # Both round their inputs and output to bf16 (8-bit mantissa: 2^-8 = 0.4% relative); gradients come back in the
    # parameters' float32. 2% of the largest value bounds a few bf16 roundings of the sums.
    x = torch.randn(8, 64, 2, 2, requires_grad=True)
    w = torch.randn(128, 64, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.conv2d(x, w, None, 1, 1)
        with SmallMapConvolutions():
            got = F.conv2d(x, w, None, 1, 1)
    assert got.dtype == want.dtype == torch.bfloat16
    scale = want.float().abs().max()
    torch.testing.assert_close(got.float() / scale, want.float() / scale, rtol=0, atol=2e-2)
    gx, gw = torch.autograd.grad(got.float().sum(), [x, w])
    assert gx.dtype == gw.dtype == torch.float32
    ex, ew = torch.autograd.grad(want.float().sum(), [x, w])
    torch.testing.assert_close(gw / ew.abs().max(), ew / ew.abs().max(), rtol=0, atol=2e-2)


def _count_calls(monkeypatch):
    calls = []
    real = small_maps.whole_map_conv2d

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(small_maps, "whole_map_conv2d", counting)
    return calls


def test_the_mode_takes_covering_convolutions_of_modules_only(monkeypatch):
    calls = _count_calls(monkeypatch)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 3, 4, 4)  # 4x4: the first convolution does not cover; its 2x2 output: the second does
    want = net(x)
    assert calls == []
    with SmallMapConvolutions():
        got = net(x)
    assert calls == [False, True]
    # float32 sums of 72 products of size ~1 in another order: rounding of ~1e-6 at most; a wrong tap is off by ~1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- the engine


def test_engine_turns_it_on_for_cpu_only_and_says_so():
    cpu = resolve_engine(device="cpu", amp="off")
    assert cpu.small_map_gemm and cpu.reasons["small_map_gemm"].startswith("auto:")
    assert cpu.as_dict()["small_map_gemm"] is True
    assert any(line.split()[:2] == ["small-map", "GEMM"] and "on" in line for line in cpu.describe())
    assert not resolve_engine(device="cpu", amp="off", small_map_gemm=False).small_map_gemm
    assert not resolve_engine(device="cpu", amp="off", compile=True).small_map_gemm  # inductor has its own
    asked_compiled = resolve_engine(device="cpu", amp="off", compile=True, small_map_gemm=True)
    assert not asked_compiled.small_map_gemm and "compiled" in asked_compiled.reasons["small_map_gemm"]
    assert not resolve_engine(device="cpu", amp="off", activation_checkpointing=True).small_map_gemm
    assert not resolve_engine(device="cuda", facts=H100).small_map_gemm
    with pytest.raises(ValueError, match="--small-map-gemm is a CPU path"):
        resolve_engine(device="cuda", facts=H100, small_map_gemm=True)


def _trained(gemm: bool, steps: int = 2):
    torch.manual_seed(0)
    model = convcanon.create_model("resnet18", num_classes=10)
    engine = resolve_engine(device="cpu", model=model, amp="off", small_map_gemm=gemm)
    model, step = build_step(model, engine, TrainConfig(model="resnet18", batch_size=16, lr=0.05),
                             say=lambda _: None)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        step([(x, y)], 1, 0.05, i)
    return model


def test_a_training_step_with_it_is_the_step_without_it_and_repeats_exactly(monkeypatch):
    calls = _count_calls(monkeypatch)
    on = _trained(True)
    # ResNet-18 at 32 px: 2x2 maps in stage 3 (3 covering of its 5), 1x1 in stage 4 (4 of 5), each of 2 steps
    assert calls.count(True) == 2 * 7
    again = _trained(True)
    off = _trained(False)
    for (name, a), b, c in zip(on.state_dict().items(), again.state_dict().values(), off.state_dict().values()):
        assert torch.equal(a, b), name  # deterministic: resume and data parallelism stay exact
        if a.is_floating_point():
            # two SGD steps at lr 0.05 from the same weights: the updates differ by the forward's rounding (1e-6
            # relative) grown through batch norm over 18 layers; 1e-4 of each tensor's scale bounds it
            scale = c.abs().max().clamp_min(1e-6)
            torch.testing.assert_close(a / scale, c / scale, rtol=0, atol=1e-4, msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_its_output_may_be_modified_in_place(channels_last):
    # VGG's ReLU(inplace=True) follows each convolution: the output must be a tensor of its own, not a view
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True)).to(memory_format=fmt)
    x = torch.randn(4, 8, 2, 2).contiguous(memory_format=fmt)
    want = torch.autograd.grad(net(x).sum(), net[0].weight)[0]
    with SmallMapConvolutions():
        got = torch.autograd.grad(net(x).sum(), net[0].weight)[0]
    # float32 sums over 4 images x 4 positions in another order (~1e-6 of values ~1); a wrong gradient is off by ~1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, side, calls, weights", [
    ("resnet18", 32, 7, 3 * 256 * 256 * 9 + 256 * 512 * 9 + 3 * 512 * 512 * 9), ("resnet18", 224, 0, 0),
    ("vgg16", 32, 3, 3 * 512 * 512 * 9), ("resnet20", 8, 5, 5 * 64 * 64 * 9), ("resnet20", 32, 0, 0)])
def test_covering_convolutions_are_counted_on_the_meta_device(name, side, calls, weights):
    torch.manual_seed(0)
    model = convcanon.create_model(name, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert small_maps.covering_convolutions(model, (3, side, side)) == (calls, weights)
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k  # weights and BN statistics untouched


def test_engine_leaves_it_off_where_the_mode_would_cost_more_than_it_gains():
    # its cost (a Python call per operation) is paid for nothing without covering convolutions (4-9% of ResNet-20's
    # step on 32 px), and exceeds the gain on small ones (ResNet-20 on the 8x8 digits: 64 channels, 184k weights)
    resnet20 = convcanon.create_model("resnet20", num_classes=10)
    off = resolve_engine(device="cpu", model=resnet20, amp="off", input_shape=(3, 32, 32))
    assert not off.small_map_gemm and "no convolution sees" in off.reasons["small_map_gemm"]
    small = resolve_engine(device="cpu", model=resnet20, amp="off", input_shape=(3, 8, 8))
    assert not small.small_map_gemm and "184k weights" in small.reasons["small_map_gemm"]
    asked = resolve_engine(device="cpu", model=resnet20, amp="off", input_shape=(3, 32, 32), small_map_gemm=True)
    assert asked.small_map_gemm
    on = resolve_engine(device="cpu", model=convcanon.create_model("resnet18"), amp="off", input_shape=(3, 32, 32))
    assert on.small_map_gemm and "7 convolutions see" in on.reasons["small_map_gemm"]


# ---- the weight gradient as one matrix product on small output maps (gemm_weight_grad_conv2d)

# (input N, C, H, W), (weight Co, Ci, kh, kw), stride, padding: ResNet-18's at 32 px whose weight gradient it takes.
SMALL_OUTPUTS = [
    ((4, 6, 4, 4), (5, 6, 3, 3), (1, 1), (1, 1)),  # stage 2's 3x3 convolutions on 4x4 maps
    ((4, 6, 8, 8), (5, 6, 3, 3), (2, 2), (1, 1)),  # stage 2's first, 8x8 -> 4x4
    ((4, 6, 4, 4), (5, 6, 1, 1), (2, 2), (0, 0)),  # the 1x1 strided shortcut, 4x4 -> 2x2
    ((4, 6, 2, 2), (5, 6, 1, 1), (2, 2), (0, 0)),  # ... 2x2 -> 1x1
    ((3, 4, 3, 5), (5, 4, 2, 3), (1, 2), (1, 0)),  # rectangular map, kernel and stride
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("xs, ws, stride, padding", SMALL_OUTPUTS)
def test_the_weight_gradient_by_matrix_product_equals_the_convolutions_in_float64(xs, ws, stride, padding, bias,
                                                                                    channels_last, monkeypatch):
    # The size rule is a speed rule (bf16, fp32); the arithmetic is checked in float64, where another summation order
    # over at most 54 * 16 terms of size ~1 stays far below 1e-12, and a wrong patch or layout is off by order 1.
    monkeypatch.setitem(small_maps.MAX_GEMM_GRAD_OUTPUTS, torch.float64, 16)
    g, fmt, x, w, b = _float64_inputs(xs, ws, bias, channels_last)
    inputs = [x, w] + ([b] if bias else [])
    want = F.conv2d(x, w, b, stride, padding)
    got = small_maps.gemm_weight_grad_conv2d(x, w, b, stride, padding)
    assert got is not None and got.grad_fn is not None and "GemmWeightGrad" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the forward pass is the convolution itself
    upstream = torch.randn(want.shape, dtype=torch.float64, generator=g)
    grads = torch.autograd.grad(got, inputs, upstream)
    for mine, theirs in zip(grads, torch.autograd.grad(want, inputs, upstream), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
        assert mine.shape == theirs.shape
    assert grads[1].is_contiguous(memory_format=fmt)


def test_the_weight_gradient_by_matrix_product_in_bf16_and_where_it_applies():
    # Under bf16 autocast it computes in bf16, as the convolution does; 2% of the largest value bounds a few bf16
    # roundings (8-bit mantissa) of sums of 9 * 64 * 128 products of size ~1 (see the covering bf16 test).
    x = torch.randn(32, 64, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(128, 64, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.conv2d(x, w, None, 1, 1)
        with SmallMapConvolutions():
            got = F.conv2d(x, w, None, 1, 1)
    assert got.dtype == want.dtype == torch.bfloat16 and "GemmWeightGrad" in type(got.grad_fn).__name__
    gx, gw = torch.autograd.grad(got.float().sum(), [x, w])
    ex, ew = torch.autograd.grad(want.float().sum(), [x, w])
    assert gw.dtype == torch.float32 and gw.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gw / ew.abs().max(), ew / ew.abs().max(), rtol=0, atol=2e-2)
    torch.testing.assert_close(gx / ex.abs().max(), ex / ex.abs().max(), rtol=0, atol=2e-2)
    # Where it does not apply, the convolution runs: 8x8 outputs in bf16, 4x4 in fp32 (the measured rule), no
    # gradient wanted, a frozen weight, groups, dilation.
    take = small_maps.gemm_weight_grad_conv2d
    big = torch.randn(2, 64, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert take(big, w, None, 1, 1) is None and take(big, w, None, 2, 1) is not None
    assert take(x, w, None, 1, 1) is None and take(x, w, None, 2, 1) is not None  # fp32: 4x4 out no, 2x2 yes
    with torch.no_grad():
        assert take(x, w, None, 2, 1) is None
    assert take(x, w.detach(), None, 2, 1) is None
    assert take(x, w, None, 2, 1, 2) is None and take(x, torch.randn(128, 32, 3, 3), None, 2, 1, 1, 2) is None
