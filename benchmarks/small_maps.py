"""The small-map GEMM (train/small_maps.py) against oneDNN's convolutions for convcanon's training step on this CPU:
the measurement behind ``--small-map-gemm``'s default (train/engine.py, docs/training.md).

    python benchmarks/small_maps.py [--seconds 4] [--amp off|bf16]

Each row builds the model and the step ``convcanon train`` runs (``train.step.build_step``: channels-last, fused SGD,
the default recipe's loss; ``amp_grid.rate``) with the small-map GEMM off and on, warms each up for two steps and counts
the steps of a timed window; the two alternate three times and each keeps its median window. Prints how many of the
model's convolution calls cover their input map at that input size and the weights they hold (what the engine's
automatic rule counts: ``small_maps.covering_convolutions``), images/s of each, and their ratio. Models without such
convolutions are the control: their ratio measures only the mode's own cost.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from amp_grid import rate  # benchmarks/ is the script's directory, first on sys.path

GRID = [("resnet18", 32, 128), ("resnet18", 64, 64), ("resnet34", 32, 128), ("resnet50", 32, 64),
        ("vgg16", 32, 64), ("googlenet", 80, 64), ("resnet20", 8, 64), ("resnet20", 32, 64), ("resnet18", 224, 16)]


def main() -> None:
    from convcanon.train.settings import build_model
    from convcanon.train.small_maps import covering_convolutions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timed window")
    parser.add_argument("--amp", default="off", choices=("off", "bf16"), help="the step's precision")
    parser.add_argument("--models", nargs="*", help="only these rows of the grid (model names)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, amp {args.amp}")
    print(f"{'model':<10} {'side':>4} {'batch':>5} {'covering':>8} {'weights':>8} {'oneDNN img/s':>12} "
          f"{'GEMM img/s':>10} {'GEMM/oneDNN':>11}")
    for name, side, batch in GRID:
        if args.models and name not in args.models:
            continue
        found = covering_convolutions(build_model(name, {}, num_classes=10, in_chans=3, image_size=side),
                                      (3, side, side))
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(3):
            for gemm in rates:
                rates[gemm].append(rate(name, side, batch, args.amp, args.seconds, small_map_gemm=gemm))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{name:<10} {side:>4} {batch:>5} {found.calls:>8} {found.weights / 1e6:>7.2f}M {off:>12.0f} "
              f"{on:>10.0f} {on / off:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
