"""fp32 against bf16 autocast for convcanon's training step on this CPU, over a grid of models and input sizes: the
measurements behind ``--amp auto``'s measured choice (train/engine.py, docs/training.md).

    python benchmarks/amp_grid.py [--seconds 4]

Each row builds the model, the step ``convcanon train`` runs (``train.step.build_step``: channels-last, fused SGD,
the default recipe's loss) in each precision, warms it up for two steps, and counts the steps of a timed window; the
two precisions alternate twice and each keeps its best window. Prints images/s and the bf16/fp32 ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

GRID = [("resnet18", 32, 128), ("resnet18", 64, 64), ("resnet18", 128, 32), ("resnet18", 224, 16),
        ("resnet50", 32, 64), ("resnet50", 224, 16), ("resnet20", 8, 64), ("resnet20", 32, 64),
        ("vgg16", 32, 64), ("alexnet", 224, 32)]


def rate(name: str, side: int, batch: int, amp: str, seconds: float, **engine_options: object) -> float:
    """Images/s of ``convcanon train``'s step for ``name`` at ``side`` px over a window of ``seconds``; the engine is
    resolved as train resolves it, ``engine_options`` (e.g. ``small_map_gemm``) overriding its automatic choices."""
    from convcanon.train.config import TrainConfig
    from convcanon.train.engine import resolve_engine
    from convcanon.train.settings import build_model
    from convcanon.train.step import build_step

    torch.manual_seed(0)
    model = build_model(name, {}, num_classes=10, in_chans=3, image_size=side)
    engine = resolve_engine(device="cpu", model=model, amp=amp, input_shape=(3, side, side), **engine_options)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one timed window")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<10} {'side':>4} {'batch':>5} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>9}")
    for name, side, batch in GRID:
        best = {"off": 0.0, "bf16": 0.0}
        for _ in range(2):
            for amp in best:
                best[amp] = max(best[amp], rate(name, side, batch, amp, args.seconds))
        print(f"{name:<10} {side:>4} {batch:>5} {best['off']:>11.0f} {best['bf16']:>11.0f} "
              f"{best['bf16'] / best['off']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
