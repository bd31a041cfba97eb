"""Parameters and multiply-accumulates, measured rather than quoted.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix work of convolutions and linear
layers (2 FLOPs per MAC). That is the convention of torchvision's published GFLOPS column (really GMACs: ResNet-50
4.09, VGG-16 15.47), so our figures are comparable with it; element-wise work (ReLU, BN, pooling) is not counted.
The forward pass runs on the ``meta`` device: shapes only, no arithmetic, so profiling VGG-19 costs milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..registry import create_model, model_info


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _meta_forward(model: nn.Module, input_size: tuple[int, int, int], batch: int = 1) -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    x = torch.empty(batch, *input_size, device="meta")
    with counter, torch.no_grad():
        model(x)
    return counter


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Forward multiply-accumulates for one image of shape ``input_size`` (C, H, W), in eval mode."""
    was_training = model.training
    meta = model.to_empty(device="meta") if _on_meta(model) else _meta_copy(model)
    meta.eval()
    try:
        return _meta_forward(meta, input_size).get_total_flops() // 2
    finally:
        model.train(was_training)


def _on_meta(model: nn.Module) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def _meta_copy(model: nn.Module) -> nn.Module:
    import copy

    with torch.device("meta"):
        return copy.deepcopy(model).to("meta")


@dataclass(frozen=True)
class ModelProfile:
    name: str
    family: str
    depth: int
    params: int
    macs: int
    input_size: tuple[int, int, int]
    num_classes: int
    summary: str

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def as_row(self) -> dict[str, object]:
        return {
            "name": self.name, "family": self.family, "depth": self.depth, "params": self.params,
            "gmacs": round(self.gmacs, 4), "input_size": "x".join(map(str, self.input_size)),
            "num_classes": self.num_classes, "summary": self.summary,
        }  # fmt: skip


def profile_model(name: str, num_classes: int | None = None, **options: object) -> ModelProfile:
    """Build ``name`` on the meta device and measure its parameters and forward MACs at its default input size."""
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **options)
    in_chans = int(options.get("in_chans", info.input_size[0]))  # type: ignore[arg-type]
    input_size = (in_chans, *info.input_size[1:])
    model.eval()
    macs = _meta_forward(model, input_size).get_total_flops() // 2
    return ModelProfile(
        name, info.family, info.depth, count_params(model), macs, input_size,
        num_classes or info.default_num_classes, info.summary,
    )  # fmt: skip


def layer_table(name: str, num_classes: int | None = None, **options: object) -> list[dict[str, object]]:
    """One row per top-level stage (and per child of a stage container): output shape, parameters, MACs."""
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **options)
    model.eval()
    in_chans = int(options.get("in_chans", info.input_size[0]))  # type: ignore[arg-type]
    rows: list[dict[str, object]] = []
    counters: dict[str, FlopCounterMode] = {}

    def units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
        out = []
        for child_name, child in module.named_children():
            full = f"{prefix}{child_name}"
            # Expand plain containers (Sequential/ModuleList of blocks) one level so stages show their blocks.
            if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1 and prefix == "":
                out += [(f"{full}.{n}", m) for n, m in child.named_children()]
            else:
                out.append((full, child))
        return out

    handles = []
    for full, module in units(model, ""):
        def pre(mod: nn.Module, inputs: tuple, key: str = full) -> None:
            counters[key] = FlopCounterMode(display=False)
            counters[key].__enter__()

        def post(mod: nn.Module, inputs: tuple, output: object, key: str = full, module: nn.Module = module) -> None:
            counters[key].__exit__(None, None, None)
            out = output[0] if isinstance(output, tuple) else output
            rows.append({
                "layer": key, "type": type(module).__name__,
                "output": "x".join(map(str, tuple(out.shape[1:]))) if hasattr(out, "shape") else "-",
                "params": count_params(module), "macs": counters[key].get_total_flops() // 2,
            })  # fmt: skip

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(torch.empty(1, in_chans, *info.input_size[1:], device="meta"))
    finally:
        for h in handles:
            h.remove()
    rows.append({"layer": "total", "type": name, "output": "-", "params": count_params(model),
                 "macs": sum(int(r["macs"]) for r in rows)})  # fmt: skip
    return rows
