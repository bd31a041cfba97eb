"""Every model speaks PyTorch's conventions: torch.fx and torchvision's feature extraction, TorchScript (script and
trace), torch.export and ONNX (dynamo and legacy exporters, run in onnxruntime where it is installed). The generic
training step, ``F.cross_entropy(model(x), y).backward()``, is in test_zoo. Every model runs every check on small
inputs; the default suite runs the small-image architectures, the slow suite (``pytest -m slow``) the others, the
ImageNet models included.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import convcanon
from convcanon import model_info

ALL = convcanon.list_models()
# The default suite: every small-image architecture (the deeper CIFAR ResNets repeat resnet20's blocks); the rest, the
# ImageNet models included, in the slow suite. torch.export and ONNX take seconds a model: two, resp. one a family.
TRACED = ["resnet20", "resnet32", "plain20", "alexnet_cifar", "vgg16_cifar", "vgg16_bn_cifar", "googlenet_cifar"]
EXPORTED = ["resnet20", "googlenet_cifar"]
ONNX = {"resnet20": "legacy", "alexnet_cifar": "both", "vgg16_bn_cifar": "legacy", "googlenet_cifar": "legacy"}


def _slow_after(default: list[str]) -> list[object]:
    return [*default, *(pytest.param(n, marks=pytest.mark.slow) for n in ALL if n not in default)]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return convcanon.create_model(name, num_classes=5).eval()


@pytest.fixture(scope="module", params=_slow_after(TRACED))
def model(request: pytest.FixtureRequest) -> nn.Module:
    """Each model once for the tests of this module (pytest runs a model's tests together, then frees it)."""
    return _build(request.param)


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    side = max(model.min_size, 32)
    return torch.randn(batch, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))


def test_fx_symbolic_trace_computes_the_model_and_keeps_the_input_check(model):
    graph = torch.fx.symbolic_trace(model)
    x = _input(model)
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))
    assert any(node.target is convcanon.layers.check_input for node in graph.graph.nodes)  # one opaque call
    with pytest.raises(ValueError, match=rf"\(N, {model.in_chans}, H, W\)"):
        graph(torch.randn(1, model.in_chans + 1, 64, 64))


def test_torchvision_feature_extraction_gives_the_stage_outputs_and_keeps_the_mode(model):
    stages = [info["module"] for info in model.feature_info]
    model.train()
    try:
        train_nodes, eval_nodes = get_graph_node_names(model)
        extractor = create_feature_extractor(model, return_nodes=stages)
        assert model.training and extractor.training  # as they found it (torchvision traces both modes)
    finally:
        model.eval()
    for nodes in (train_nodes, eval_nodes):
        assert all(any(n == s or n.startswith(f"{s}.") for n in nodes) for s in stages)
    x = _input(model)
    with torch.no_grad():
        features = extractor.eval()(x)
        expected = model.forward_intermediates(x, intermediates_only=True)
    assert list(features) == stages
    for got, want, info in zip(features.values(), expected, model.feature_info, strict=True):
        assert got.shape[1] == info["num_chs"]
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torchscript_script_and_trace(model):
    x = _input(model)
    scripted = torch.jit.script(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected)
        torch.testing.assert_close(traced(x), expected)
        other = _input(model, batch=3)
        torch.testing.assert_close(scripted(other), model(other))  # a script is not tied to the example's shape


@pytest.mark.parametrize("name", _slow_after(EXPORTED))
def test_torch_export_with_dynamic_batch_and_size(name):
    model = _build(name)
    # Sides in steps of the last stage's reduction, its map at least 2x2: the pools' floors and ceils are then exact
    # and no map is a 1x1 that export would specialize on.
    step = model.feature_info[-1]["reduction"]
    steps = max(2, model_info(name).input_size[1] // step)
    batch, size = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("size", min=steps, max=2 * steps)
    x = torch.randn(2, model.in_chans, steps * step, steps * step)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch, 2: step * size, 3: step * size},))
    exported = program.module()
    other = torch.randn(3, model.in_chans, (steps + 1) * step, (steps + 1) * step)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x))
        torch.testing.assert_close(exported(other), model(other))


def _onnx_matches(model: nn.Module, x: torch.Tensor, *, dynamo: bool) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            payload = torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto.SerializeToString()
        else:
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"])
            payload = buffer.getvalue()
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the export ran, unchecked")
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    # onnxruntime's own kernels: float32 rounding differs from PyTorch's, not the function.
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


def _onnx_cases() -> list[object]:
    cases = []
    for name in ALL:
        for exporter in ("dynamo", "legacy"):
            default = ONNX.get(name) in (exporter, "both")
            marks = () if default else (pytest.mark.slow,)
            cases.append(pytest.param(name, exporter == "dynamo", id=f"{name}-{exporter}", marks=marks))
    return cases


@pytest.mark.parametrize(("name", "dynamo"), _onnx_cases())
def test_onnx_export_runs_in_onnxruntime(name, dynamo):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    model = _build(name)
    side = model_info(name).input_size[1]  # the nominal size: the legacy exporter needs pools it can express
    _onnx_matches(model, torch.randn(1, model.in_chans, side, side), dynamo=dynamo)
