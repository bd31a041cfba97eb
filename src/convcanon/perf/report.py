"""The text report of ``convcanon bench``."""

from __future__ import annotations

from typing import Any

from .timing import Series


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_report(result: Any) -> str:
    """The benchmark's figures as the text ``convcanon bench`` prints (``result``: a ``perf.bench.BenchResult``)."""
    cfg, setup = result.config, result.setup
    shape = setup["shape"]
    lines = [
        f"convcanon bench: {cfg['model']}, batch {cfg['batch_size']}, {shape['in_chans']}x{shape['image_size']}x"
        f"{shape['image_size']}, {shape['num_classes']} classes; {setup['device_name']} ({setup['device']}), torch "
        f"{setup['torch']}",
        *setup["engine_lines"],
    ]
    for key, why in setup.get("compile_failed", {}).items():
        lines.append(f"note: torch.compile failed for {key} ({why}); it ran in eager mode")
    if setup["baseline"]:
        lines.append(f"baseline: {setup['baseline']}")
    if cfg["data"]:
        lines.append(f"data: ours fed by --data {cfg['data']} (the training loop's batches) vs one synthetic batch")
    lines.append(f"{cfg['windows']} timed windows per subject, alternating, after {cfg['warmup']} warm-up calls; "
                 "median [min..max] images/s")
    lines.append(f"model FLOPs per image: {_si(setup['train_flops_per_image'], 'FLOP')} training (3 x forward), "
                 f"{_si(setup['infer_flops_per_image'], 'FLOP')} inference")

    def table(title: str, series: dict[str, Series], flops: float) -> None:
        if not series:
            return
        lines.append(f"{title}:")
        for key, s in series.items():
            lines.append(f"  {key:<11} {s.median:10.1f} [{min(s.rates):.1f}..{max(s.rates):.1f}] images/s  "
                         f"spread {100 * s.spread:3.0f}%  {_si(s.median * flops, 'FLOP/s')}")

    table("training step", result.train, setup["train_flops_per_image"])
    table("inference", result.infer, setup["infer_flops_per_image"])
    r = result.ratios
    if "train_ours_over_baseline" in r:
        infer = f", inference {r['infer_ours_over_baseline']:.2f}x" if "infer_ours_over_baseline" in r else ""
        lines.append(f"ours / baseline: training {r['train_ours_over_baseline']:.2f}x{infer} (median of per-round "
                     "ratios)")
    if "train_data_over_synthetic" in r:
        lines.append(f"end-to-end / synthetic: {100 * r['train_data_over_synthetic']:.1f}% (target >= 90%)")
    if "train_checkpointed_over_plain" in r:
        lines.append(f"activation checkpointing: {r['train_checkpointed_over_plain']:.2f}x the speed without it")
    if result.decode:
        lines += _decode_lines(result.decode)
    if result.peak is not None:
        p = result.peak
        lines.append(f"peak ({setup['peak']}): {_si(p.median, 'FLOP/s')} [{_si(min(p.rates), '')}.."
                     f"{_si(max(p.rates), '')}]")
        lines.append("utilization (model FLOP/s / peak, per round): " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in result.utilization.items()))
    if result.memory:
        lines.append(f"peak memory of a training step ({setup['memory_method']}): " + ", ".join(
            f"{k} {v / 2**20:.0f} MiB" for k, v in result.memory.items()))
        if "ours_plain" in result.memory and result.memory["ours_plain"]:
            saving = 1 - result.memory["ours"] / result.memory["ours_plain"]
            lines.append(f"activation checkpointing saves {100 * saving:.0f}% of the step's peak memory")
    return "\n".join(lines)


def _decode_lines(d: dict[str, Any]) -> list[str]:
    if d.get("kind") == "memory":
        ratio = d["delivered_over_training"]
        verdict = "keeps up with" if ratio >= 1 else "is the bottleneck of"
        return [f"augmentation on the device (in-memory data; {d['augment']}):",
                f"  loader      {d['images_per_s']:10.1f} images/s  (batches of {d['batch_size']}, no workers)",
                f"  it {verdict} ours' training step: {ratio:.2f}x of {d['training_images_per_s']:.1f} images/s"]
    lines = [
        f"decode (folder data; per sample: read + PIL decode + {d.get('augment') or 'crop + flip'} + to tensor):",
        f"  per worker  {d['per_worker']:10.1f} images/s  (one process, {d['sample']} files)",
        f"  loader      {d['loader']:10.1f} images/s  ({d['workers']} workers, {d['cpus']} CPUs usable, "
        f"{d['loader_images']} files)",
    ]
    if d["gpu"] is not None:
        lines.append(f"  GPU decode  {d['gpu']:10.1f} images/s  (loader of file bytes + nvJPEG + crop on the GPU)")
    elif d["gpu_error"]:
        lines.append(f"  GPU decode  unavailable: {d['gpu_error']}")
    lines.append(f"  in use      {d['choice_line']}")
    ratio, need = d["delivered_over_training"], d["workers_needed"]
    verdict = "keeps up" if ratio >= 1 else "is the bottleneck"
    lines.append(f"  the {d['choice']} decode path {verdict}: {d['delivered']:.1f} / {d['training_images_per_s']:.1f} "
                 f"images/s of ours' training step = {ratio:.2f}x; PIL decoding would need {need} worker(s)"
                 f"{' (more than the CPUs here)' if need > d['cpus'] else ''}")
    return lines


__all__ = ["format_report"]
