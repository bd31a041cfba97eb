"""The small-map GEMM (train/small_maps.py) against oneDNN's convolutions for convcanon's training step on this CPU:
the measurement behind ``--small-map-gemm``'s default (train/engine.py, docs/training.md).

    python benchmarks/small_maps.py [--seconds 4] [--amp off|bf16]

Each row builds the model and the step ``convcanon train`` runs (``train.step.build_step``: channels-last, fused SGD,
the default recipe's loss) with the small-map GEMM off and on, warms each up for two steps and counts the steps of a
timed window; the two alternate three times and each keeps its median window. Prints how many of the model's
convolutions cover their input map at that input size, images/s of each, and their ratio. Models without such
convolutions are the control: their ratio measures only the mode's own cost (about 1).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

GRID = [("resnet18", 32, 128), ("resnet18", 64, 64), ("resnet34", 32, 128), ("resnet50", 32, 64),
        ("vgg16", 32, 64), ("googlenet", 80, 64), ("resnet20", 8, 64), ("resnet20", 32, 64), ("resnet18", 224, 16)]


def covering(model: nn.Module, side: int) -> tuple[int, int]:
    """(convolutions that cover their input map, all convolutions) in one forward pass at ``side``."""
    from convcanon.train.small_maps import covering_plan

    seen: list[bool] = []

    def look(conv: nn.Conv2d, args: tuple) -> None:
        h, w = args[0].shape[-2:]
        plan = covering_plan(h, w, *conv.kernel_size, *conv.stride, *conv.padding) if (
            conv.groups == 1 and conv.dilation == (1, 1) and isinstance(conv.padding, tuple)) else None
        seen.append(plan is not None)

    hooks = [m.register_forward_pre_hook(look) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, side, side))
    for h in hooks:
        h.remove()
    return sum(seen), len(seen)


def rate(name: str, side: int, batch: int, amp: str, gemm: bool, seconds: float) -> float:
    from convcanon.train.config import TrainConfig
    from convcanon.train.engine import resolve_engine
    from convcanon.train.settings import build_model
    from convcanon.train.step import build_step

    torch.manual_seed(0)
    model = build_model(name, {}, num_classes=10, in_chans=3, image_size=side)
    engine = resolve_engine(device="cpu", model=model, amp=amp, small_map_gemm=gemm)
    _, step = build_step(model, engine, TrainConfig(model=name, batch_size=batch, lr=1e-3), say=lambda _: None)
    x, y = torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))
    for i in range(2):
        step([(x, y)], 1, 1e-3, i)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step([(x, y)], 1, 1e-3, n)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    from convcanon.train.settings import build_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timed window")
    parser.add_argument("--amp", default="off", choices=("off", "bf16"), help="the step's precision")
    parser.add_argument("--models", nargs="*", help="only these rows of the grid (model names)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, amp {args.amp}")
    print(f"{'model':<10} {'side':>4} {'batch':>5} {'covering':>9} {'oneDNN img/s':>12} {'GEMM img/s':>10} "
          f"{'GEMM/oneDNN':>11}")
    for name, side, batch in GRID:
        if args.models and name not in args.models:
            continue
        hits, total = covering(build_model(name, {}, num_classes=10, in_chans=3, image_size=side), side)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(3):
            for gemm in rates:
                rates[gemm].append(rate(name, side, batch, args.amp, gemm, args.seconds))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{name:<10} {side:>4} {batch:>5} {f'{hits}/{total}':>9} {off:>12.0f} {on:>10.0f} {on / off:>11.2f}",
              flush=True)


if __name__ == "__main__":
    main()
