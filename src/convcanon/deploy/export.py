"""A trained model as a file other runtimes load: ONNX, a ``torch.export`` ExportedProgram, or TorchScript.

``export_model`` writes the artifact, loads it back, runs it on a sample batch (and, with ``dynamic_batch``, on a
second batch of another size) and compares with PyTorch's own output: the largest absolute difference of the logits
must stay within ``TOLERANCE`` x max(1, largest logit). The exporters and runtimes compute in fp32 with other kernels
and another summation order, which moves logits by a few 1e-6 relative; 1e-4 leaves room for that and still catches
a wrong graph (a dropped layer or a swapped normalization moves logits by far more). ONNX goes through
``torch.onnx.export(dynamo=True)`` and is checked in onnxruntime when it is installed (``pip install
convcanon[export]``); without it the file is written and checked by ``onnx.checker`` only, and the report says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMATS = ("onnx", "exported-program", "torchscript")
SUFFIXES = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".pt"}
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass
class ExportReport:
    """What was written and how close the reloaded artifact computes to PyTorch."""

    format: str
    path: Path
    max_abs_diff: float | None  # None: not run (no runtime for the format)
    tolerance: float
    batch_sizes: list[int]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= self.tolerance


def sample_batches(model: nn.Module, dynamic_batch: bool, seed: int = 0) -> list[Tensor]:
    """Random inputs of the model's recorded input size: a batch of 2, and one of 3 when the batch is dynamic."""
    shape = tuple(model.pretrained_cfg["input_size"])
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((n, *shape), generator=gen) for n in ((2, 3) if dynamic_batch else (2,))]


def check_target(fmt: str, out: str | Path) -> Path:
    """``out`` as a Path, once ``fmt`` is known and ``out`` has its suffix; else a ValueError naming the flag."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    if out.suffix != SUFFIXES[fmt]:
        raise ValueError(f"--out {out}: a {fmt} file ends in {SUFFIXES[fmt]}")
    return out


def export_model(model: nn.Module, fmt: str, out: str | Path, *, dynamic_batch: bool = False) -> ExportReport:
    """Export ``model`` (eval mode, CPU, fp32) as ``fmt`` to ``out``, reload it and compare (module docstring). The
    artifact is written beside ``out`` under a temporary name and renamed to ``out`` only when it passes: a failed
    export leaves no file that looks good."""
    out = check_target(fmt, out)
    model = model.float().cpu().eval()
    batches = sample_batches(model, dynamic_batch)
    with torch.no_grad():
        expected = [model(x) for x in batches]
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        run, details = {"onnx": _onnx, "exported-program": _exported_program, "torchscript": _torchscript}[fmt](
            model, batches[0], tmp, dynamic_batch)
        diff = None
        if run is not None:
            with torch.no_grad():
                diff = max(float((run(x) - y).abs().max()) for x, y in zip(batches, expected, strict=True))
        scale = max(1.0, max(float(y.abs().max()) for y in expected))
        report = ExportReport(fmt, out, diff, TOLERANCE * scale, [len(x) for x in batches], details)
        if report.ok:
            os.replace(tmp, out)
        return report
    finally:
        tmp.unlink(missing_ok=True)


def _onnx(model: nn.Module, x: Tensor, out: Path, dynamic: bool) -> tuple[Any, dict[str, Any]]:
    import onnx

    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=shapes, verbose=False)
    program.save(str(out))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    details = {"opset": opset, "inputs": [i.name for i in proto.graph.input],
               "outputs": [o.name for o in proto.graph.output]}
    try:
        import onnxruntime
    except ImportError:
        details["runtime"] = "not checked: onnxruntime is not installed (pip install convcanon[export])"
        return None, details
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    details["runtime"] = f"onnxruntime {onnxruntime.__version__}"
    return (lambda batch: torch.from_numpy(session.run(None, {details["inputs"][0]: batch.numpy()})[0])), details


def _exported_program(model: nn.Module, x: Tensor, out: Path, dynamic: bool) -> tuple[Any, dict[str, Any]]:
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    torch.export.save(program, out)
    loaded = torch.export.load(out).module()
    return (lambda batch: loaded(batch)), {"runtime": f"torch {torch.__version__} (torch.export.load)"}


def _torchscript(model: nn.Module, x: Tensor, out: Path, dynamic: bool) -> tuple[Any, dict[str, Any]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice: the format is still read
        scripted = torch.jit.script(model)
        scripted.save(str(out))
        loaded = torch.jit.load(str(out))
    return (lambda batch: loaded(batch)), {"runtime": f"torch {torch.__version__} (torch.jit.load)"}


__all__ = ["ExportReport", "FORMATS", "SUFFIXES", "TOLERANCE", "check_target", "export_model", "sample_batches"]
