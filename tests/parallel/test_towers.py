"""AlexNet's two towers on two devices: the placement, and the same function and gradients as the one-device model."""

from __future__ import annotations

import pytest
import torch

import convcanon
from convcanon.parallel.towers import TwoTowerAlexNet


def _alexnet_cifar(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return convcanon.create_model("alexnet_cifar", dropout=0.0, **options)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_two_towers_compute_the_one_device_model(batch_norm):
    model = _alexnet_cifar(batch_norm=batch_norm).train()
    towers = TwoTowerAlexNet(model, ("cpu", "cpu")).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 3, 5, 9])
    out_model, out_towers = model(x), towers(x)
    # 1e-5: each half of a layer is a smaller convolution or matrix product over the same inputs, which CPU kernels
    # may block differently (measured ~2e-6 of the largest logit); any misplaced channel would be O(1).
    torch.testing.assert_close(out_towers, out_model, rtol=1e-5, atol=1e-5)
    torch.nn.functional.cross_entropy(out_model, y).backward()
    torch.nn.functional.cross_entropy(out_towers, y).backward()
    grads = towers.merged_gradients()
    assert sorted(grads) == sorted(n for n, _ in model.named_parameters())
    for name, p in model.named_parameters():
        # Relative to each gradient's norm (single elements near 0 carry no meaning): the same sums, regrouped, ~1e-6.
        assert (grads[name] - p.grad).norm() <= 1e-5 * p.grad.norm(), name
    # Batch statistics per channel are the same whichever device holds the channel.
    merged = towers.merged_state_dict()
    assert list(merged) == list(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)


def test_the_paper_alexnet_on_two_towers_in_eval():
    torch.manual_seed(0)
    model = convcanon.create_model("alexnet").eval()
    towers = TwoTowerAlexNet(model, ("cpu", "cpu")).eval()
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        torch.testing.assert_close(towers(x), model(x), rtol=1e-5, atol=1e-5)
    assert towers.merged_state_dict().keys() == model.state_dict().keys()
    n_model = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in towers.parameters()) == n_model == 60_965_224  # halves, nothing duplicated


def test_placement_puts_each_tower_on_its_device():
    # The meta device stands in for a second device: the placement is decided without computing anything.
    towers = TwoTowerAlexNet(_alexnet_cifar(), ("cpu", "meta"))
    assert towers.placement["features.conv2"] == ("cpu", "meta")
    assert set(towers.placement) == {f"features.conv{i}" for i in range(1, 6)} | {"classifier.1", "classifier.4",
                                                                                    "classifier.6"}
    for name, _exchange, first, second in towers.steps:
        assert all(p.device.type == "cpu" for p in first.parameters()), name
        assert all(p.device.type == "meta" for p in second.parameters()), name
    # Each tower holds half of every layer: conv2 (grouped in the paper) reads only its own tower's 24 channels.
    conv2 = dict((n, (a, b)) for n, _, a, b in towers.steps)["features.conv2"]
    assert conv2[0].weight.shape == conv2[1].weight.shape == (64, 24, 5, 5)
    # Exchanges happen where the paper's GPUs communicated: conv1 (the image), conv3 and the FC layers.
    exchanged = [n for n, exchange, *_ in towers.steps if exchange]
    assert exchanged == ["features.conv1", "features.conv3", "classifier.1", "classifier.4", "classifier.6"]


def test_one_tower_models_are_refused():
    with pytest.raises(ValueError, match="two-tower AlexNet"):
        TwoTowerAlexNet(convcanon.create_model("alexnet_owt"), ("cpu", "cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_towers_on_gpus():
    # Two GPUs as in the paper; with one, the second tower runs on the CPU (the same transfers, slower).
    devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cuda:0", "cpu")
    model = _alexnet_cifar().eval()
    towers = TwoTowerAlexNet(model, devices).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out = towers(x.to(devices[0]))
    assert out.device == torch.device(devices[0])
    # 1e-3: GPU kernels (TF32 where enabled) against the CPU model.
    torch.testing.assert_close(out.cpu(), model(x), rtol=1e-3, atol=1e-3)
    assert towers.placement["features.conv4"] == tuple(str(torch.device(d)) for d in devices)
