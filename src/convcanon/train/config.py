"""Training configuration: one typed dataclass with the defaults of the main job, YAML and ``--key value`` on top.

Precedence: dataclass defaults < ``--config FILE.yaml`` < flags given on the command line. Unknown keys and values of
the wrong type are errors that name the key and the file or flag. The parsed config is never mutated: derived
quantities (global batch, scaled LR, warmup steps) are computed once by ``resolve`` into a separate frozen object.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Optimizer = Literal["sgd", "adamw"]
Amp = Literal["auto", "off", "bf16", "fp16"]
Schedule = Literal["cosine", "step", "constant"]
PipelineSchedule = Literal["gpipe", "1f1b"]
PipelineBalance = Literal["flops", "time"]
Decode = Literal["auto", "cpu", "gpu"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]
Policy = Literal["none", "trivialaugment", "randaugment", "autoaugment"]
DataCache = Literal["auto", "memory", "stream"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Defaults are the embedded main job: a CIFAR-style ResNet-20 on 8x8 digits."""

    # what to train
    model: str = "resnet20"
    model_options: dict[str, Any] = field(default_factory=dict)  # the zoo's idea switches, e.g. {"residual": False}
    data: str = "digits"  # digits | synthetic[:C:S:K] | cifar10[:PATH] | cifar100[:PATH] | mnist[:PATH] | folder:PATH
    data_root: str | None = None  # where named standard sets are downloaded (None: $CONVCANON_DATA or the user cache)
    image_size: int | None = None  # input side for file data (default 224) or a resize of in-memory data
    skip_bad: bool = False  # leave undecodable files out (still fails above 1% bad)
    workers: int = 2  # DataLoader worker processes for file data
    decode: Decode = "auto"  # folder JPEGs: gpu = nvJPEG on CUDA; auto = gpu only where a timed sample is faster
    data_cache: DataCache = "auto"  # folder data: memory = decoded once into one tensor; auto = when it fits

    # augmentation, timm's names and meanings; None or empty = the data set's default (data/recipe.py), printed at start
    hflip: float | None = None  # probability of a horizontal flip (digits: 0, CIFAR and folders: 0.5)
    scale: list[float] = field(default_factory=list)  # random-resized crop: area fraction MIN MAX (folders: 0.08 1)
    ratio: list[float] = field(default_factory=list)  # random-resized crop: aspect ratio MIN MAX (3/4 4/3)
    pad: int | None = None  # pad-and-crop: zero padding in pixels (digits and CIFAR: 1/8 of the side)
    interpolation: Interpolation = "bilinear"
    aa: Policy = "none"  # a torchvision.transforms.v2 policy
    reprob: float = 0.0  # random erasing probability
    mean: list[float] = field(default_factory=list)  # per channel, 0..1 scale (default: the data set's, or ImageNet's)
    std: list[float] = field(default_factory=list)
    train_crop_size: int | None = None  # side of training batches (default: --image-size)
    val_resize_size: int | None = None  # evaluation: resize to this, then
    val_crop_size: int | None = None  # take the center crop of this side (default: --image-size)
    ra_reps: int = 1  # repeated augmentation: each image K times in a row of the epoch's order
    init: str | None = None  # start from these weights (train/finetune.py): a run, weights file, .pth, torchvision:NAME
    freeze: str = "none"  # none | backbone (train the head only) | backbone:K (and the body's last K blocks)
    head_lr_mult: float = 1.0  # the head's learning rate is lr x this

    # optimization; lr is the base LR at base_batch and is scaled linearly to the global batch (Goyal et al. 2017)
    epochs: int = 40  # the main job's: with label smoothing and the weight average, >= 99% on every seed (BENCHMARKS)
    batch_size: int = 64  # per device, per micro-batch
    accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 0.1
    base_batch: int = 256
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to batch-norm and bias parameters
    label_smoothing: float | None = None  # None = auto: 0.1 for the embedded digits (the main job), else 0
    warmup_epochs: float = 1.0
    schedule: Schedule = "cosine"
    milestones: list[int] = field(default_factory=lambda: [100, 150])  # epochs, for schedule=step
    gamma: float = 0.1  # LR factor at each milestone
    aux_weight: float = 0.3  # GoogLeNet's auxiliary losses, as in the paper
    grad_clip: float = 0.0  # max global grad norm; 0 = off

    # batch-level regularizers and weight averaging (train/mixing.py, train/ema.py); timm's flag names
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0 = off
    mixup_prob: float = 1.0  # the chance that a batch is mixed at all
    mixup_switch_prob: float = 0.5  # with both on: the chance that a mixed batch uses CutMix instead of MixUp
    model_ema: bool | None = None  # None = auto: on for the embedded digits (the main job), off elsewhere
    model_ema_decay: float = 0.995  # before torchvision's adjustment for global batch, interval and epochs
    model_ema_steps: int = 1  # optimizer steps between EMA updates

    # engineering
    amp: Amp = "auto"  # auto = bf16 where the GPU or CPU has native bf16 (train/engine.py), else off
    channels_last: bool | None = None  # None = auto: NHWC except for models with LRN (train/engine.py)
    compile: bool | None = None  # None = auto: on GPU (Triton), off on CPU (train/engine.py)
    small_map_gemm: bool | None = None  # None = auto: on CPU, convolutions covering their map as a GEMM (small_maps.py)
    activation_checkpointing: bool = False  # recompute ResNet blocks in backward: less memory, ~1/3 more compute
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False

    # scaling out: data parallelism under torchrun, pipeline model parallelism
    dist_backend: str | None = None  # gloo | nccl | mpi | ucc | xccl; default: nccl on CUDA, gloo on CPU
    dist_timeout: float = 300.0  # seconds a rank may be silent before the others stop the job naming it
    pipeline_stages: int = 1  # K > 1: split the model's layers over K processes (torchrun --nproc-per-node K)
    microbatches: int = 4  # pipeline micro-batches per optimizer step; batch_size is split into this many
    pipeline_schedule: PipelineSchedule = "1f1b"  # gpipe | 1f1b: same result, 1F1B holds fewer activations
    pipeline_split: list[int] = field(default_factory=list)  # layers per stage, e.g. [5, 6]; empty = balance by cost
    pipeline_balance: PipelineBalance = "flops"  # cost per layer for the automatic split: flops | time (measured)

    # run directory
    out: str | None = None
    keep_checkpoints: int = 3
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = at each epoch end only
    log_every: int = 20  # optimizer steps between metrics.jsonl lines
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    progress: bool = True


# Keys a resumed run may change; everything else must match the run it continues.
# Engineering only; and batch_size / accum_steps so that a run can resume on another number of processes with the
# same global batch (the loop checks that it is the same).
RESUME_OVERRIDABLE = frozenset({"epochs", "workers", "decode", "progress", "keep_checkpoints", "log_every",
                                "max_steps", "data_root",
                                "dist_backend", "dist_timeout", "batch_size", "accum_steps"})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(key: str, value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0], where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {key} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {key} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: {key} must be a list; got {value!r}")
        return [_check_type(key, v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a mapping; got {value!r}")
        return dict(value)
    return value


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a config from plain values; unknown keys and wrong types raise ValueError naming ``where``."""
    hints = _field_types()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        import difflib

        def hint(key: str) -> str:
            close = difflib.get_close_matches(key, hints, n=2)
            return f"{key!r} (did you mean {' or '.join(close)}?)" if close else repr(key)

        raise ValueError(f"{where}: unknown key(s) {'; '.join(map(hint, unknown))}; the keys are the long flags of "
                         "`convcanon train --help` with _ for -, e.g. batch_size")
    checked = {k: _check_type(k, v, hints[k], where) for k, v in values.items()}
    cfg = TrainConfig(**checked)
    validate(cfg, where)
    return cfg


MAX_IMAGE_SIZE = 4096  # a side past this is a typo (a 4096x4096 input is ~100x ImageNet's per image)
MAX_SEED = 2**63  # seeds are 63-bit (data.base.derive_seed)

# The valid range of every numeric setting: (key, is the value in range?, the range in words).
_RANGES: tuple[tuple[str, Any, str], ...] = (
    *((key, lambda v: v >= 1, "an integer >= 1") for key in (
        "epochs", "batch_size", "accum_steps", "base_batch", "keep_checkpoints", "log_every", "pipeline_stages",
        "microbatches", "model_ema_steps")),
    *((key, lambda v: v >= 0, "an integer >= 0") for key in ("checkpoint_every", "max_steps", "workers")),
    ("seed", lambda v: 0 <= v < MAX_SEED, "an integer in [0, 2**63)"),
    ("image_size", lambda v: v is None or 1 <= v <= MAX_IMAGE_SIZE, f"a side in pixels from 1 to {MAX_IMAGE_SIZE}"),
    ("lr", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("label_smoothing", lambda v: v is None or 0 <= v < 1, "a number in [0, 1)"),
    ("gamma", lambda v: 0 < v <= 1, "a factor in (0, 1]"),
    *((key, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0") for key in (
        "weight_decay", "warmup_epochs", "aux_weight", "grad_clip", "mixup", "cutmix")),
    *((key, lambda v: 0 <= v <= 1, "a probability in [0, 1]") for key in ("mixup_prob", "mixup_switch_prob")),
    ("model_ema_decay", lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.995"),
    ("dist_timeout", lambda v: math.isfinite(v) and v > 0, "a number of seconds > 0"),
    ("head_lr_mult", lambda v: math.isfinite(v) and v > 0, "a finite factor > 0"),
    ("ra_reps", lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
    *((key, lambda v: v is None or 0 <= v <= 1, "a probability in [0, 1]") for key in ("hflip",)),
    ("reprob", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("pad", lambda v: v is None or 0 <= v <= MAX_IMAGE_SIZE, f"pixels from 0 to {MAX_IMAGE_SIZE}"),
    *((key, lambda v: v is None or 1 <= v <= MAX_IMAGE_SIZE, f"a side in pixels from 1 to {MAX_IMAGE_SIZE}")
      for key in ("train_crop_size", "val_resize_size", "val_crop_size")),
    ("scale", lambda v: not v or (len(v) == 2 and 0 < v[0] <= v[1] <= 1), "two area fractions MIN MAX, 0 < MIN <= "
     "MAX <= 1"),
    ("ratio", lambda v: not v or (len(v) == 2 and 0 < v[0] <= v[1] and math.isfinite(v[1])), "two aspect ratios MIN "
     "MAX, 0 < MIN <= MAX"),
    ("mean", lambda v: all(0 <= m <= 1 for m in v), "one value per channel in [0, 1]"),
    ("std", lambda v: all(0 < m < math.inf for m in v), "one value per channel > 0"),
    ("milestones", lambda v: all(m >= 0 for m in v) and v == sorted(set(v)), "increasing epochs >= 0"),
    ("pipeline_split", lambda v: all(n >= 1 for n in v), "layers per stage, each >= 1"),
)


def flag_name(key: str) -> str:
    """The command-line flag of a config key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def validate(cfg: TrainConfig, where: str = "config") -> None:
    """Every range check that needs neither the data nor the model; each error names the flag and its valid range."""
    for key, ok, valid in _RANGES:
        value = getattr(cfg, key)
        if not ok(value):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise ValueError(f"{where}: {flag_name(key)} must be {valid}; got {shown}")
    if cfg.warmup_epochs > cfg.epochs:
        raise ValueError(f"{where}: --warmup-epochs ({cfg.warmup_epochs}) must be at most --epochs ({cfg.epochs})")
    if cfg.decode == "gpu" and cfg.device == "cpu":
        raise ValueError(f"{where}: --decode gpu decodes JPEGs on a CUDA device, and --device is cpu: use --decode "
                         "auto or cpu")
    _validate_augmentation(cfg, where)
    _validate_scaling(cfg, where)


def _validate_augmentation(cfg: TrainConfig, where: str) -> None:
    if cfg.pad is not None and cfg.scale:
        raise ValueError(f"{where}: --pad and --scale are two crop modes (pad-and-crop, random-resized crop): give one")
    if cfg.val_crop_size and cfg.val_resize_size and cfg.val_crop_size > cfg.val_resize_size:
        raise ValueError(f"{where}: --val-crop-size ({cfg.val_crop_size}) must be at most --val-resize-size "
                         f"({cfg.val_resize_size}): the center crop is taken from the resized image")


def _validate_scaling(cfg: TrainConfig, where: str) -> None:
    from .distributed import BACKENDS

    if cfg.dist_backend is not None and cfg.dist_backend not in BACKENDS:
        raise ValueError(f"{where}: --dist-backend must be one of {', '.join(BACKENDS)}; got {cfg.dist_backend!r}")
    if cfg.pipeline_split and len(cfg.pipeline_split) != cfg.pipeline_stages:
        raise ValueError(f"{where}: --pipeline-split gives {len(cfg.pipeline_split)} stage sizes "
                         f"{cfg.pipeline_split} for --pipeline-stages {cfg.pipeline_stages}: give one per stage")
    if cfg.pipeline_stages > 1:
        if cfg.batch_size % cfg.microbatches:
            raise ValueError(f"{where}: --batch-size {cfg.batch_size} must be a multiple of --microbatches "
                             f"{cfg.microbatches} (the pipeline splits each batch into equal micro-batches)")
        if cfg.accum_steps != 1:
            raise ValueError(f"{where}: --accum-steps must be 1 with --pipeline-stages > 1: the pipeline accumulates "
                             "over its micro-batches already (raise --batch-size and --microbatches instead)")
        if cfg.sync_bn:
            raise ValueError(f"{where}: --sync-bn is for data parallelism; a pipeline has one replica (batch norm "
                             "sees each micro-batch: see the README's pipeline section)")


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p) or str(err)
    return where + " ".join(what.split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {path}: not a text file (byte {err.start} is not UTF-8); a config is YAML text"
                         ) from None
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------------------------------
# Command line: one flag per field, generated from the dataclass so the two can never disagree.

# What each flag means, for the flags whose name and default do not say it all; every command that takes the flag shows
# this text (``add_shared_flags``), so it means the same thing everywhere.
_FLAG_HELP = {
    "init": "start a new run from these weights: a convcanon run directory, model.safetensors or checkpoint, a "
            "torchvision state-dict .pth file, or torchvision:WEIGHTS (e.g. "
            "torchvision:ResNet50_Weights.IMAGENET1K_V2, downloaded once into torch hub's cache); a different class "
            "count re-initializes the class layer",
    "freeze": "backbone: train the head only; backbone:K: the head and the body's last K blocks; none",
    "head_lr_mult": "the head's learning rate is --lr x this (fine-tuning)",
    "model": "a model of the zoo (`convcanon models` lists them)",
    "model_options": "a model idea switch, repeatable (e.g. residual=false, activation=tanh, dropout=0.2)",
    "data": "the data set: digits, synthetic[:C[:S[:K]]], cifar10, cifar100, mnist, fashion-mnist (downloaded once "
            "into --data-root), NAME:PATH for a copy of one of those, folder:PATH or PATH (an ImageFolder tree)",
    "data_root": "where --data cifar10, cifar100, mnist and fashion-mnist are downloaded once and read from (not "
                 "given: $CONVCANON_DATA, else $XDG_CACHE_HOME/convcanon/data or ~/.cache/convcanon/data)",
    "batch_size": "images per device in each step (a micro-batch under --accum-steps); the global batch is this x "
                  "processes x --accum-steps",
    "optimizer": "sgd (Nesterov momentum) or adamw",
    "amp": "autocast precision: auto = bf16 where the GPU (Ampere+) or CPU (AVX512-BF16/AMX) computes in bf16 "
           "natively (on such a CPU, measured on the step: fp32 when clearly faster), else off (fp32); fp16 uses a "
           "loss scaler, CUDA only",
    "label_smoothing": "the target's weight spread over the other classes (Szegedy et al. 2016; timm's --smoothing); "
                       "auto = 0.1 for the embedded digits (the main job's recipe), 0 elsewhere, as in the papers",
    "channels_last": "NHWC memory format; auto = on, except for models with local response norm",
    "small_map_gemm": "on CPU, run each convolution whose every output sees its whole input map (late layers at small "
                      "inputs, e.g. ResNet-18's 2x2 and 1x1 maps at 32 px) as one matrix product, and the weight "
                      "gradient of small output maps as one; auto = on on CPU when those convolutions hold >= 1M "
                      "weights, unless compiling",
    "compile": "torch.compile the model; auto = on CUDA (capability >= 7.0), off on CPU where it does not pay",
    "deterministic": "deterministic kernels (turns cuDNN autotuning off)",
    "device": "auto | cpu | cuda | cuda:N (auto: CUDA when there is one)",
    "image_size": "input side: the crop of folder data (224 if not given) or a resize of in-memory data (their own "
                  "size if not given)",
    "workers": "DataLoader worker processes for folder data",
    "dist_backend": "torch.distributed backend (not given: nccl on CUDA, gloo on CPU)",
    "out": "run directory (not given: runs/<model>-<data>-<time>)",
    "activation_checkpointing": "recompute ResNet blocks in backward: about half the activation memory for ~1/3 more "
                                "compute",
    "mixup": "MixUp (Zhang et al. 2018): each batch blended with itself paired up, weight ~ Beta(ALPHA, ALPHA), "
             "the targets blended alike (timm's --mixup); 0 = off",
    "cutmix": "CutMix (Yun et al. 2019): a box of the paired image pasted in, its area 1 - lam with lam ~ Beta(ALPHA, "
              "ALPHA), the targets weighted by area (timm's --cutmix); 0 = off",
    "mixup_prob": "the chance that a batch is mixed when --mixup or --cutmix is on",
    "mixup_switch_prob": "with both --mixup and --cutmix: the chance that a mixed batch uses CutMix",
    "model_ema": "evaluate and keep an exponential moving average of the weights beside them; auto = on for the "
                 "embedded digits (the main job), off elsewhere",
    "model_ema_decay": "EMA decay, adjusted as torchvision's reference does: per update 1 - (1 - DECAY) x global "
                       "batch x --model-ema-steps / --epochs (the run prints the result)",
    "model_ema_steps": "optimizer steps between EMA updates",
    "decode": "where folder data's JPEGs are decoded: cpu = PIL in the DataLoader workers, gpu = nvJPEG on the CUDA "
              "device in batches, auto = gpu only on CUDA and only when timing 64 files says it is faster",
}

_FLAG_HELP.update({
    "data_cache": "folder data: memory = decode the tree once into one uint8 tensor and augment whole batches on the "
                  "device; stream = decode every epoch in the DataLoader workers; auto = memory when the images share "
                  "one square size and fit in half the memory",
    "hflip": "horizontal-flip probability (not given: the data set's: 0 for the digits, 0.5 for CIFAR and folders)",
    "scale": "random-resized crop: the crop's area fraction MIN MAX (folders: 0.08 1); switches in-memory data from "
             "pad-and-crop to it",
    "ratio": "random-resized crop: aspect ratio MIN MAX (default 0.75 1.333)",
    "pad": "pad-and-crop for small images: zero padding in pixels, then a random crop back (not given: 1/8 of the side "
           "for the digits and CIFAR, none for folders)",
    "interpolation": "resampling of the random-resized crop, the policies and the evaluation resize",
    "aa": "augmentation policy of torchvision.transforms.v2: trivialaugment (TrivialAugmentWide), randaugment, "
          "autoaugment (ImageNet policy)",
    "reprob": "random-erasing probability (torchvision's RandomErasing; erased pixels take the mean colour)",
    "mean": "normalization mean per channel, 0..1 scale (not given: the data set's; `convcanon scan --stats` measures "
            "a folder's)",
    "std": "normalization std per channel (not given: the data set's)",
    "train_crop_size": "side of the training crops (not given: --image-size); FixRes: train 176, evaluate 232/224",
    "val_resize_size": "evaluation resize before the center crop (not given: the crop x 256/224 for folders, the "
                       "crop for in-memory data)",
    "val_crop_size": "evaluation center crop (not given: --image-size)",
    "ra_reps": "repeated augmentation: each image K times in the same global batch, differently augmented "
               "(torchvision's --ra-sampler, --ra-reps)",
})

# The groups of flags other commands share with train (``add_shared_flags``).
MODEL_FLAGS = ("model", "model_options")
DATA_FLAGS = ("data", "data_root", "image_size", "workers", "decode")
AUGMENT_FLAGS = ("hflip", "scale", "ratio", "pad", "interpolation", "aa", "reprob", "mean", "std", "train_crop_size",
                 "val_resize_size", "val_crop_size", "ra_reps", "data_cache")
ENGINE_FLAGS = ("amp", "channels_last", "compile", "small_map_gemm", "deterministic", "device")

_TRAIN_DEFAULT: Any = object()


@dataclass(frozen=True)
class FlagOverride:
    """How a command other than train takes one of train's flags: the meaning, type and choices stay train's."""

    default: Any = _TRAIN_DEFAULT  # the command's own default (its help states it); unset: TrainConfig's
    default_text: str | None = None  # the default in words, where its value does not say it
    note: str = ""  # what the flag does in this command, after the shared help
    extra_choices: tuple[str, ...] = ()  # values only this command takes (estimate's --amp tf32)
    aliases: tuple[str, ...] = ()  # further names (estimate's --precision for --amp)


def _parse_scalar(text: str) -> Any:
    """KEY=VALUE values: YAML scalars (true, 3, 0.5, relu)."""
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "") else value


def parse_model_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option expects KEY=VALUE (e.g. residual=false); got {item!r}")
        options[key.strip().replace("-", "_")] = _parse_scalar(value.strip())
    return options


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per TrainConfig field; every default is None (= not given: the YAML's value, else
    the dataclass default, which the help states)."""
    parser.add_argument("--config", metavar="FILE.yaml", help="load settings from a YAML file; flags override it")
    for f in dataclasses.fields(TrainConfig):
        _add_flag(parser, f.name, FlagOverride(), given_only=True)


def add_shared_flags(parser: argparse.ArgumentParser, keys: tuple[str, ...],
                     overrides: dict[str, FlagOverride] | None = None) -> None:
    """Add train's flags for the TrainConfig fields ``keys`` to another command's ``parser``: the same names, types,
    choices and help, so that a flag means the same thing in every command. ``overrides`` gives a command its own
    default or note for a flag (``FlagOverride``); the parsed defaults are values (TrainConfig's unless overridden),
    except ``--model-option``'s, None for no option."""
    for key in keys:
        _add_flag(parser, key, (overrides or {}).get(key, FlagOverride()), given_only=False)


def _in_words(default: Any, is_bool: bool) -> str:
    if is_bool:
        return {None: "auto", True: "on", False: "off"}[default]
    return "none" if default in ({}, []) else str(default)


def _add_flag(parser: argparse.ArgumentParser, key: str, override: FlagOverride, *, given_only: bool) -> None:
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    annotation = _field_types()[key]
    args = typing.get_args(annotation)
    is_bool = annotation is bool or set(args) == {bool, type(None)}  # bool | None: None = auto
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if override.default is not _TRAIN_DEFAULT:
        default = override.default
    core = _FLAG_HELP.get(key, "")
    shown = override.default_text or ("auto" if default is None and "auto =" in core else _in_words(default, is_bool))
    # A None default the help explains ("not given: ...") needs no "(default: None)".
    helptext = core if default is None and "not given" in core and not override.default_text else \
        f"{core} (default: {shown})".strip()
    if override.note:
        helptext = f"{helptext}; {override.note}"
    names = ("--model-option" if key == "model_options" else "--" + key.replace("_", "-"), *override.aliases)
    value = None if given_only or key == "model_options" else default
    if key == "model_options":
        parser.add_argument(*names, dest=key, action="append", metavar="KEY=VALUE", default=None, help=helptext)
    elif is_bool:
        parser.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction, default=value, help=helptext)
    elif typing.get_origin(annotation) is Literal:
        parser.add_argument(*names, dest=key, choices=(*args, *override.extra_choices), default=value, help=helptext)
    elif typing.get_origin(annotation) is list:
        metavar = ("MIN", "MAX") if key in ("scale", "ratio") else None
        parser.add_argument(*names, dest=key, type=args[0], nargs=2 if metavar else "+", metavar=metavar,
                            default=value, help=helptext)
    else:
        base = next((a for a in (args or (annotation,)) if a is not type(None)), str)
        parser.add_argument(*names, dest=key, type=base, default=value, help=helptext)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """Merge defaults < YAML < explicit flags. Returns the config and the names of keys set explicitly."""
    values: dict[str, Any] = {}
    where = "command line"
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
        where = f"--config {args.config} / command line"
    given: set[str] = set(values)
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if f.name == "model_options":
            value = {**values.get("model_options", {}), **parse_model_options(value)}
        values[f.name] = value
        given.add(f.name)
    return config_from_dict(values, where), given
