"""Convolutions on small maps as one matrix product, on CPU.

A convolution where every output position sees the whole input map is a dense layer on the flattened map:

    out[o, co] = sum over input positions i and channels ci of  x[i, ci] * W[co, ci, tap(i, o)]

with ``tap(i, o)`` the one kernel tap joining input ``i`` to output ``o``. Such convolutions are the late layers of an
ImageNet network fed small images: ResNet-18 at 32 px computes its last stage on 1x1 maps (a 3x3 kernel of which
only the centre ever meets data) and the stage before on 2x2 maps; VGG-16 at 32 px ends on 2x2 maps. oneDNN computes
them tap by tap, mostly over padding, and its backward pass takes 3-7x its forward there; the same sums as one matrix
product (the weight laid out as that dense matrix; in backward its gradient summed back onto the taps) run 2.5-5x
faster, forward and backward together, on the CPUs measured, which makes ResNet-18's whole training step at 32 px
about 1.5-1.6x faster (``python benchmarks/small_maps.py``; BENCHMARKS.md).

The result is the convolution's to rounding (another summation order; in float64 they agree to 1e-12), and the weight
gradient of the taps that only ever meet padding is exactly zero, as in the convolution.

oneDNN's weight gradient is slow on small output maps too, where the map does not cover (stride-2 shortcuts, 3x3
convolutions on 4x4 maps): on those, :func:`gemm_weight_grad_conv2d` keeps the convolution's forward pass and input
gradient and computes the weight gradient as one product of the output gradient with the input's patches, when the
output map has at most ``MAX_GEMM_GRAD_OUTPUTS`` positions for the dtype computed in (ResNet-18's step at 32 px in
bf16: 1.24x faster again).

Every other convolution, and every other operation, runs as before: :class:`SmallMapConvolutions` is a torch function
mode that the engine enters around forward passes on CPU (``--no-small-map-gemm`` turns it off), and it only takes the
convolutions those two accept.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

# The dense matrix is at most this many times the kernel's size (a 3x3 kernel on a 2x2 map: 16 pairs of positions
# against 9 taps). Covering convolutions stay under it unless their kernel dwarfs the map.
MAX_EXPANSION = 2.0


class Plan(NamedTuple):
    """How a covering convolution's kernel becomes its dense matrix: ``used`` the taps that join some input position to
    some output position (flat ``ky * kw + kx``, in order of first use), ``pos`` for each (output, input) pair, outputs
    outer, the index of its tap in ``used``; ``unique`` when every pair has a tap of its own (``pos`` = 0, 1, ...)."""

    used: Tensor
    pos: Tensor
    out_h: int
    out_w: int
    unique: bool


@functools.lru_cache(maxsize=512)
def covering_plan(h: int, w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> Plan | None:
    """The plan for a ``kh`` x ``kw`` kernel at stride (``sh``, ``sw``) and zero padding (``ph``, ``pw``) on an ``h`` x
    ``w`` map when every output position sees every input position, else None (then the convolution runs as usual)."""
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if out_h < 1 or out_w < 1 or out_h * out_w * h * w > MAX_EXPANSION * kh * kw:
        return None
    taps = []
    for oy in range(out_h):
        for ox in range(out_w):
            for iy in range(h):
                for ix in range(w):
                    ky, kx = iy - oy * sh + ph, ix - ox * sw + pw
                    if not (0 <= ky < kh and 0 <= kx < kw):
                        return None
                    taps.append(ky * kw + kx)
    used = list(dict.fromkeys(taps))
    pos = [used.index(t) for t in taps]
    return Plan(torch.tensor(used), torch.tensor(pos), out_h, out_w, len(used) == len(taps))


def _format_of(t: Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


class _WholeMapConv(torch.autograd.Function):
    """``conv2d(x, weight, bias)`` for a covering convolution (``plan``), as ``x`` flattened per image (positions
    outer, channels inner: channels-last's own order) times the dense matrix."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, plan: Plan) -> Tensor:
        n, ci, h, w = x.shape
        co, _, kh, kw = weight.shape
        outs, ins = plan.out_h * plan.out_w, h * w
        # The taps in use, then cast to the input's dtype (autocast's): on a 1x1 map one tap in nine, so the weight's
        # other taps are never copied, and its gradient is made in the weight's own dtype below.
        taps = weight.permute(0, 2, 3, 1).reshape(co, kh * kw, ci).index_select(1, plan.used)  # [co, used, ci]
        taps = taps.to(x.dtype)
        pairs = taps if plan.unique else taps.index_select(1, plan.pos)  # [co, outs * ins, ci]
        dense = pairs.reshape(co, outs, ins, ci).transpose(0, 1).reshape(outs * co, ins * ci)
        flat = x.permute(0, 2, 3, 1).reshape(n, ins * ci)
        ctx.save_for_backward(flat, dense)
        ctx.plan, ctx.x_shape, ctx.w_shape, ctx.has_bias = plan, x.shape, weight.shape, bias is not None
        ctx.w_dtype = weight.dtype
        ctx.x_format, ctx.w_format = _format_of(x), _format_of(weight)
        # The output is a tensor of its own, not a view of the product's (a later in-place ReLU modifies it).
        y = torch.empty((n, co, plan.out_h, plan.out_w), dtype=x.dtype, memory_format=torch.channels_last)
        rows = y.permute(0, 2, 3, 1).view(n, outs * co)  # channels-last's memory order: the product's
        if bias is None:
            torch.mm(flat, dense.t(), out=rows)
        else:
            torch.addmm(bias.repeat(outs), flat, dense.t(), out=rows)
        return y if ctx.x_format == torch.channels_last else y.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        flat, dense = ctx.saved_tensors
        plan: Plan = ctx.plan
        n, ci, h, w = ctx.x_shape
        co, _, kh, kw = ctx.w_shape
        outs, ins = plan.out_h * plan.out_w, h * w
        g = grad.permute(0, 2, 3, 1).reshape(n, outs * co)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g @ dense).reshape(n, h, w, ci).permute(0, 3, 1, 2).contiguous(memory_format=ctx.x_format)
        if ctx.needs_input_grad[1]:
            gpairs = (g.t() @ flat).reshape(outs, co, ins, ci).transpose(0, 1).reshape(co, outs * ins, ci)
            gtaps = gpairs if plan.unique else gpairs.new_zeros(co, len(plan.used), ci).index_add_(1, plan.pos, gpairs)
            gtaps = gtaps.to(ctx.w_dtype)
            gw = gtaps.new_zeros(co, kh * kw, ci).index_copy_(1, plan.used, gtaps)
            gw = gw.reshape(co, kh, kw, ci).permute(0, 3, 1, 2).contiguous(memory_format=ctx.w_format)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(n * outs, co).sum(0)
        return gx, gw, gb, None


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) for e in v):
        return int(v[0]), int(v[1])
    return None  # a string padding ("same", "valid") or anything else: left to the convolution


def _plain_conv(x: Any, weight: Any, stride: Any, padding: Any, dilation: Any,
                groups: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(stride, padding) of a ``torch.conv2d`` call either path can take (a batch of 2-D maps, no groups or dilation,
    zero padding given as numbers), else None: the call is left to the convolution."""
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor) and x.dim() == 4 and weight.dim() == 4):
        return None
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if groups != 1 or s is None or p is None or d != (1, 1) or weight.shape[1] != x.shape[1]:
        return None
    return s, p


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype a CPU convolution of ``x`` and ``weight`` computes in: autocast's when it is on, else theirs (None
    when they differ: the convolution's own error says what is wrong)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype if x.dtype == weight.dtype else None


def _plan_for(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
              groups: int = 1) -> Plan | None:
    """The plan for ``torch.conv2d``'s arguments when it covers its input map (``_plain_conv``), else None."""
    args = _plain_conv(x, weight, stride, padding, dilation, groups)
    if args is None:
        return None
    (sh, sw), (ph, pw) = args
    return covering_plan(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], sh, sw, ph, pw)


def whole_map_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
                     dilation: Any = 1, groups: int = 1) -> Tensor | None:
    """``torch.conv2d``'s result computed as one matrix product when the convolution covers its input map (on CPU; see
    ``_plan_for``), else None. Under CPU autocast, computes in its dtype as the convolution would."""
    plan = _plan_for(x, weight, bias, stride, padding, dilation, groups)
    if plan is None or x.device.type != "cpu":
        return None
    dtype = _compute_dtype(x, weight)
    if dtype is None:
        return None
    # conv2d computes in the autocast dtype: so does its replacement (the weight's taps are cast inside, once selected)
    x, bias = x.to(dtype), bias.to(dtype) if bias is not None else None
    with torch.autocast("cpu", enabled=False):
        return _WholeMapConv.apply(x, weight, bias, plan)


# The weight gradient of a convolution with at most this many output positions per map runs as one matrix product
# (``gemm_weight_grad_conv2d``), by the dtype it computes in: measured on 2 cores of a Xeon with AMX (oneDNN's
# weight gradient against the patches' product: bf16 2-56x faster up to 4x4 outputs, 0.6x on 8x8; fp32 2-8x up to
# 2x2 outputs, 0.8-1.1x on 4x4). docs/training.md has the table.
MAX_GEMM_GRAD_OUTPUTS = {torch.bfloat16: 16, torch.float32: 4}


class _GemmWeightGradConv(torch.autograd.Function):
    """``conv2d(x, weight, bias, stride, padding)``: forward and input gradient are the convolution's own (oneDNN),
    the weight gradient one matrix product of the output gradient with the input's patches."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        ctx.w_format = _format_of(weight)
        return torch.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        kh, kw = weight.shape[2:]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, list(ctx.stride), list(ctx.padding),
                                                     [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = patches_weight_grad(grad, x, (kh, kw), ctx.stride, ctx.padding).contiguous(memory_format=ctx.w_format)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


def patches_weight_grad(grad: Tensor, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                        padding: tuple[int, int]) -> Tensor:
    """A convolution's weight gradient (Co, Ci, kh, kw; channels-last strides) from its output gradient ``grad`` and
    input ``x``: one product of the gradient (positions x Co) with the input's patches (positions x kh * kw * Ci)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ci, co = x.shape[1], grad.shape[1]
    padded = nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    patches = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # [n, ci, oh, ow, kh, kw]
    cols = patches.permute(0, 2, 3, 4, 5, 1).reshape(-1, kh * kw * ci)  # channels inner, as channels-last
    rows = grad.permute(0, 2, 3, 1).reshape(-1, co)
    return (rows.t() @ cols).reshape(co, kh, kw, ci).permute(0, 3, 1, 2)


def gemm_weight_grad_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
                            padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Tensor | None:
    """``torch.conv2d``'s result, its weight gradient computed as one matrix product, when the weight is being
    trained on CPU and the output map is small (``MAX_GEMM_GRAD_OUTPUTS``; no groups or dilation, zero padding given
    as numbers), else None. oneDNN's weight gradient is slow on small maps, most of all in bf16 and at stride 2 (a
    ResNet's 1x1 shortcut: 4.9 ms where the product takes 0.1)."""
    args = _plain_conv(x, weight, stride, padding, dilation, groups)
    if args is None or x.device.type != "cpu" or not (torch.is_grad_enabled() and weight.requires_grad):
        return None
    dtype = _compute_dtype(x, weight)
    if dtype is None:
        return None
    s, p = args
    out_h = (x.shape[2] + 2 * p[0] - weight.shape[2]) // s[0] + 1
    out_w = (x.shape[3] + 2 * p[1] - weight.shape[3]) // s[1] + 1
    if out_h < 1 or out_w < 1 or out_h * out_w > MAX_GEMM_GRAD_OUTPUTS.get(dtype, 0):
        return None
    x, weight = x.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast("cpu", enabled=False):
        return _GemmWeightGradConv.apply(x, weight, bias, s, p)


class SmallMapConvolutions(TorchFunctionMode):
    """While entered, ``torch.conv2d`` (``nn.Conv2d``, ``F.conv2d``) on a map it covers runs as one matrix product
    (:func:`whole_map_conv2d`), and one with a small output map computes its weight gradient as one
    (:func:`gemm_weight_grad_conv2d`); every other call runs unchanged."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            out = whole_map_conv2d(*args, **kwargs)
            if out is None:
                out = gemm_weight_grad_conv2d(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


class Covering(NamedTuple):
    """The convolution calls of a forward pass that cover their input map: how many, and their weights' total size."""

    calls: int
    weights: int


class _CountCovering(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = self.weights = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d and _plan_for(*args, **kwargs) is not None:
            self.calls += 1
            self.weights += (args[1] if len(args) > 1 else kwargs["weight"]).numel()
        return func(*args, **kwargs)


def covering_convolutions(model: nn.Module, input_shape: tuple[int, int, int]) -> Covering:
    """The convolution calls of ``model``'s training forward pass on ``input_shape`` (C, H, W) images that cover their
    input map: shapes only, on the meta device (nothing is computed; the model's weights and buffers are untouched)."""
    from ..layers import meta_call

    count = _CountCovering()
    with count, torch.no_grad():
        meta_call(model, torch.empty((2, *input_shape), device="meta"))
    return Covering(count.calls, count.weights)


# The small-map GEMM pays when the convolutions it takes hold at least this many weights in all (a 256-channel 3x3
# convolution holds 590k): below, oneDNN is about as fast on them and the mode's Python call per operation of the
# forward pass costs more (ResNet-20 on the 8x8 digits, 184k: the main job 5-15% slower; GoogLeNet at 80 px, 1.4M:
# 1.05x faster; ResNet-18 at 32 px, 10M: 1.5-1.6x). docs/training.md.
MIN_COVERING_WEIGHTS = 1_000_000

GPU_REFUSAL = ("--small-map-gemm is a CPU path (oneDNN's convolutions on small maps); on a GPU leave it off (the "
               "default there)")


def resolve_small_map_gemm(asked: bool | None, gpu: bool, compiled: bool, checkpointing: bool,
                           model: nn.Module | None, input_shape: tuple[int, int, int] | None) -> tuple[bool, str]:
    """``--small-map-gemm``: on CPU by default, unless compiling or recomputing activations (train/engine.py's
    docstring), or when ``model``'s convolutions that cover their map at ``input_shape`` hold fewer than
    ``MIN_COVERING_WEIGHTS`` weights (the mode's own cost, about 10-40 us per operation of the forward pass, outweighs
    their gain: with none, 4-9% of ResNet-20's step on 32 px)."""
    if asked and gpu:
        raise ValueError(GPU_REFUSAL)
    if asked and compiled:
        return False, "off: the model is compiled (inductor lowers the convolutions itself)"
    if asked is not None:
        return asked, "as asked"
    if gpu:
        return False, "auto: off on GPU (cuDNN)"
    if compiled:
        return False, "auto: off under --compile (inductor lowers the convolutions)"
    if checkpointing:
        return False, "auto: off with activation checkpointing (recomputed outside the forward's context)"
    if model is None or input_shape is None:
        return True, "auto: convolutions that cover their whole input map run as one matrix product"
    side = f"{input_shape[1]}x{input_shape[2]}"
    try:
        covering = covering_convolutions(model, input_shape)
    except Exception as err:  # a model the meta device cannot trace: the mode is safe either way
        return True, f"auto: on (could not count this model's small maps: {type(err).__name__})"
    if covering.calls == 0:
        return False, f"auto: off, no convolution sees its whole input map on {side} inputs"
    if covering.weights < MIN_COVERING_WEIGHTS:
        return False, (f"auto: off, the convolutions that see their whole input map on {side} inputs are small "
                       f"({covering.weights / 1e3:.0f}k weights): the mode would cost more than they gain")
    many = f"{covering.calls} convolutions see" if covering.calls != 1 else "1 convolution sees"
    return True, f"auto: on {side} inputs, {many} their whole input map: one matrix product each"


__all__ = ["GPU_REFUSAL", "MAX_EXPANSION", "MAX_GEMM_GRAD_OUTPUTS", "MIN_COVERING_WEIGHTS", "Covering", "Plan",
           "SmallMapConvolutions", "covering_convolutions", "covering_plan", "gemm_weight_grad_conv2d",
           "patches_weight_grad", "resolve_small_map_gemm", "whole_map_conv2d"]
