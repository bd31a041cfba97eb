"""The README's main job, timed end to end: wall-clock from process start (imports included) to the first epoch whose
test accuracy reaches the target, and the final accuracy, over several seeds.

    python benchmarks/main_job.py [--seeds 0 1 2] [--target 99.0] [-- extra convcanon train flags]

Prints one line per seed and a summary. "final" is the accuracy of the weights the run delivers in model.safetensors
(the weight average when it evaluated better, see summary.json's "weights"); the raw model's and the average's last
figures are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(seed: int, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"seed{seed}"
    cmd = [sys.executable, "-m", "convcanon", "train", "--out", str(out), "--seed", str(seed), "--no-progress", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    summary = json.loads((out / "summary.json").read_text())
    raw, ema = summary["final"]["top1"], summary.get("final_ema", {}).get("top1")
    final = ema if summary.get("weights") == "ema" else raw
    return {"seed": seed, "wall_s": wall, "final": final, "raw": raw, "ema": ema, "weights": summary.get("weights"),
            "evals": [(e["time"] - t0, max(e["top1"], e.get("ema_top1", 0.0))) for e in evals]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=99.0)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    finals, walls, reached = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run_once(seed, extra, Path(tmp))
            first = next((t for t, acc in r["evals"] if acc >= args.target), None)
            final = r["final"]
            finals.append(final)
            walls.append(r["wall_s"])
            reached.append(first)
            shown = f"{first:.1f} s" if first is not None else "never"
            ema = f"{r['ema']:.2f}%" if r["ema"] is not None else "-"
            print(f"seed {seed}: final top-1 {final:.2f}% ({r['weights']} weights; raw {r['raw']:.2f}%, EMA {ema}), "
                  f"{args.target}% first reached at {shown}, whole run {r['wall_s']:.1f} s", flush=True)
    ok = [t for t in reached if t is not None]
    print(f"summary over {len(args.seeds)} seeds: final top-1 {statistics.mean(finals):.2f}% "
          f"(min {min(finals):.2f}, max {max(finals):.2f}); whole run {statistics.median(walls):.1f} s median; "
          f"target reached by {len(ok)}/{len(reached)} seeds"
          + (f", median {statistics.median(ok):.1f} s" if ok else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
