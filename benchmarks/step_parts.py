"""Parts of convcanon's CPU training step, each against the way it was done before, measured in this process:

    python benchmarks/step_parts.py [--model resnet18] [--side 32] [--batch 128]

1. The optimizer's update on channels-last weights: torch's fused SGD and AdamW given the tensors as they are (the
   kernel copies each non-contiguous one in and out) against ``optim.build_optimizer``'s (the same kernel on their
   contiguous views, ``optim.dense_views``), and against the same model in NCHW; ms per update.
2. The weight gradient of ResNet-18's convolutions with small output maps at 32 px: oneDNN's
   (``aten.convolution_backward`` computing only that output) against the product of the output gradient with the
   input's patches (``small_maps.gemm_weight_grad_conv2d``'s), bf16 and fp32; ms per call.
3. The whole training step (``train.step.build_step``, the small-map GEMM on) with and without the weight-gradient
   product, in bf16 and fp32: windows of three steps alternate between the two in one process, so that the machine's
   drift hits both alike; the median of the paired ratios.

Medians of the timed repeats throughout; the step's ratio comes with the range of its middle ten pairs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (batch, in channels, out channels, input side, kernel, stride, padding): ResNet-18's convolutions at 32 px whose
# output map is at most 4x4, and one on 8x8 maps for contrast.
CONVOLUTIONS = [(128, 128, 128, 4, 3, 1, 1), (128, 64, 64, 8, 3, 1, 1), (128, 128, 256, 4, 3, 2, 1),
                (128, 64, 128, 8, 3, 2, 1), (128, 256, 512, 2, 1, 2, 0), (128, 128, 256, 4, 1, 2, 0),
                (128, 64, 128, 8, 1, 2, 0)]


def _ms(fn: Callable[[], object], calls: int = 10, repeats: int = 5) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def optimizer_update(model_name: str, side: int) -> None:
    from convcanon.train.config import TrainConfig
    from convcanon.train.optim import build_optimizer
    from convcanon.train.settings import build_model

    print(f"1. optimizer update, {model_name} (ms per update)")
    for kind in ("sgd", "adamw"):
        row = {}
        for case in ("NCHW", "channels-last, as is", "channels-last, dense views"):
            torch.manual_seed(0)
            model = build_model(model_name, {}, num_classes=10, in_chans=3, image_size=side)
            if case != "NCHW":
                model = model.to(memory_format=torch.channels_last)
            cfg = TrainConfig(model=model_name, lr=0.1, nesterov=True, weight_decay=5e-4, optimizer=kind)
            opt = build_optimizer(model, cfg, torch.device("cpu"))
            if case == "channels-last, as is":
                opt.__class__ = type(opt).__mro__[2]  # torch's own class, without the dense views
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            row[case] = _ms(opt.step)
        print("   " + kind + ": " + ", ".join(f"{case} {ms:.2f}" for case, ms in row.items()))


def weight_gradients() -> None:
    from convcanon.train.small_maps import patches_weight_grad

    print("2. weight gradient per convolution (ms): oneDNN / patches' product")
    for dtype in (torch.bfloat16, torch.float32):
        for n, ci, co, s, k, st, pad in CONVOLUTIONS:
            x = torch.randn(n, ci, s, s).to(dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(co, ci, k, k).to(dtype).contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(F.conv2d(x, w, stride=st, padding=pad))

            def onednn(g=g, x=x, w=w, st=st, pad=pad) -> object:
                return torch.ops.aten.convolution_backward(g, x, w, None, [st, st], [pad, pad], [1, 1], False,
                                                           [0, 0], 1, [False, True, False])

            def product(g=g, x=x, st=st, pad=pad, k=k) -> object:
                return patches_weight_grad(g, x, (k, k), (st, st), (pad, pad))

            a, b = _ms(onednn), _ms(product)
            out = (s + 2 * pad - k) // st + 1
            print(f"   {str(dtype)[6:]:8} {k}x{k} s{st} {ci:>3}->{co:<3} {s}x{s}->{out}x{out}: {a:6.2f} / {b:6.2f}  "
                  f"({a / b:.1f}x)")


def whole_step(model_name: str, side: int, batch: int) -> None:
    from convcanon.train import small_maps
    from convcanon.train.config import TrainConfig
    from convcanon.train.engine import resolve_engine
    from convcanon.train.settings import build_model
    from convcanon.train.step import build_step

    print(f"3. training step, {model_name} at {side} px, batch {batch} (ms per step)")
    real = small_maps.gemm_weight_grad_conv2d
    for amp in ("bf16", "off"):
        torch.manual_seed(0)
        model = build_model(model_name, {}, num_classes=10, in_chans=3, image_size=side)
        engine = resolve_engine(device="cpu", model=model, amp=amp, input_shape=(3, side, side), small_map_gemm=True)
        _, step = build_step(model, engine, TrainConfig(model=model_name, batch_size=batch, lr=1e-3),
                             say=lambda _: None)
        x, y = torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))
        ways = {"without": lambda *a, **k: None, "with": real}
        times: dict[str, list[float]] = {way: [] for way in ways}
        for i in range(14):
            for way in (ways if i % 2 else list(ways)[::-1]):
                small_maps.gemm_weight_grad_conv2d = ways[way]
                t0 = time.perf_counter()
                for j in range(3):
                    step([(x, y)], 1, 1e-3, j)
                if i >= 2:  # two rounds of warm-up
                    times[way].append((time.perf_counter() - t0) / 3 * 1e3)
        small_maps.gemm_weight_grad_conv2d = real
        ratios = sorted(a / b for a, b in zip(times["without"], times["with"], strict=True))
        print(f"   {amp:4}: without {statistics.median(times['without']):.1f}, with "
              f"{statistics.median(times['with']):.1f}: {statistics.median(ratios):.2f}x "
              f"(paired {ratios[1]:.2f}-{ratios[-2]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    optimizer_update(args.model, args.side)
    weight_gradients()
    whole_step(args.model, args.side, args.batch)


if __name__ == "__main__":
    main()
