"""The estimator's inputs, checked before any work: every flag's range, the device and its precision (``--amp``'s
words), the batch (``--batch-size`` per device, as in ``convcanon train``, or ``--global-batch``), the layout of the
devices, and what the run feeds the model (``plan_input``). Each error names the flag to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..train.config import TrainConfig
from ..train.ema import ema_choice
from .catalog import DATASETS, DEVICES, Device, get_dataset, get_device
from .workload import smallest_input

if TYPE_CHECKING:
    from .measure import Measurement

DEFAULT_BATCH_PER_DEVICE = TrainConfig.batch_size  # convcanon train's: --batch-size means the same in both
# --amp's words for the estimator's precisions: off is fp32; auto is resolved per device (catalog_precision).
AMP_PRECISIONS = {"off": "fp32", "fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}
AMP_CHOICES = ("auto", *AMP_PRECISIONS)
IMAGENET_SIDE = 224  # models whose default input is this large are ImageNet models
OPTIMIZERS = ("sgd", "adamw")
PARALLEL = ("data", "towers")


def check_positive(flag: str, value: float | None, integer: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, bool) or (integer and not isinstance(value, int)) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{flag} must be {kind}, got {value!r}")


def choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r} is not one of: {', '.join(choices)}")


@dataclass(frozen=True)
class TrainData:
    """``convcanon train``'s ``--data`` as the estimator takes it: a catalog set, or the size and shape of the user's
    own data (an ImageFolder tree, synthetic data), found without decoding an image."""

    label: str  # what the estimate calls the data
    catalog: str | None  # a catalog data set (DATASETS), or None
    images: int | None = None  # training images (own data)
    val_images: int | None = None
    image_size: int | None = None  # the side train feeds the model (own data)
    num_classes: int | None = None
    in_chans: int | None = None
    in_memory: bool | None = None  # held in memory as train would hold it (own data); None: the catalog's


# Standard sets whose own folder (``cifar10:PATH``...) the estimator takes as its catalog entry: only the size counts.
STANDARD_FOLDERS = ("cifar10", "cifar100", "mnist", "fashion-mnist")


def train_data(spec: str, image_size: int | None = None) -> TrainData:
    """Read train's ``--data`` SPEC for an estimate. Catalog names stand as they are, and a standard set's own folder
    (``cifar10:PATH``, ``mnist:PATH``...) is its catalog entry; ``synthetic:C:S:K`` is its 1,024 + 256 images; an
    ImageFolder tree (``folder:PATH`` or a folder's path) is listed, not decoded: its train/ and val/ image counts,
    classes, train's image side (``image_size`` or 224) and whether train would hold it in memory (the first
    image's header against this machine's memory, as ``--data-cache auto`` decides). Raises ValueError naming
    ``--data``."""
    kind = spec.partition(":")[0]
    if spec in DATASETS or kind in STANDARD_FOLDERS:
        return TrainData(kind, kind)
    from ..data.folder_cache import memory_plan
    from ..data.memory import SYNTHETIC_SIZE
    from ..data.scan import list_tree
    from ..data.spec import parse_data

    try:
        parsed = parse_data(spec, image_size=image_size)
        tree = list_tree(parsed.path) if parsed.kind == "folder" and parsed.path is not None else None
    except (ValueError, FileNotFoundError) as err:
        problem, _, forms = str(err).partition("\n")
        raise ValueError(f"--data {spec!r}: {problem}; the estimator's catalog: {', '.join(DATASETS)}"
                         + (f"; and train's forms:\n{forms}" if forms else "")) from None
    shape = dict(image_size=parsed.image_size, num_classes=parsed.num_classes, in_chans=parsed.in_chans)
    if parsed.kind == "synthetic":
        return TrainData(spec, None, SYNTHETIC_SIZE, SYNTHETIC_SIZE // 4, in_memory=True, **shape)
    if tree is None:  # a standard set in its default place
        return TrainData(parsed.kind, parsed.kind)
    train, val = tree.files["train"], tree.files["val"]
    try:
        held = memory_plan(train[0][0], len(train) + len(val), "auto", "auto")[0]
    except OSError:  # a first file whose header cannot be read: train streams the tree (and its scan names the file)
        held = False
    return TrainData(spec, None, len(train), len(val), in_memory=held, **shape)


@dataclass(frozen=True)
class InputPlan:
    """What the run feeds the model: the profiled image side (None: the model's default), classes, channels."""

    image_size: int | None
    num_classes: int | None
    in_chans: int | None
    notes: tuple[str, ...]


def plan_input(model: str, data: str | None, image_size: int | None = None,
               model_options: dict[str, object] | None = None) -> InputPlan:
    """Size, classes and channels of a run, and notes: an ImageNet model on small images, a model too big for them."""
    from ..registry import model_info

    dataset = get_dataset(data) if data is not None else None
    options = dict(model_options or {})
    num_classes = options.pop("num_classes", dataset.num_classes if dataset else None)
    in_chans = options.pop("in_chans", dataset.in_chans if dataset else None)
    info = model_info(model)
    default = info.input_size[1]
    notes: list[str] = []
    if image_size:
        side = image_size
    elif dataset is not None and dataset.image_size:
        side = dataset.image_size
        if default >= IMAGENET_SIDE > side:
            small = "resnet20..110, vgg16_cifar, alexnet_cifar or googlenet_cifar"
            notes.append(f"{model} is an ImageNet model ({default}x{default} input) and {dataset.name} has "
                         f"{side}x{side} images; the small-image models ({small}) are built for them")
    elif dataset is not None and default < IMAGENET_SIDE:  # ImageNet-style crops for a small-image model
        side = IMAGENET_SIDE
        notes.append(f"{model} is a small-image model ({default}x{default}); estimated at {dataset.name}'s "
                     f"{side}x{side} crops")
    else:
        side = default
    if side == default:
        return InputPlan(None, num_classes, in_chans, tuple(notes))  # type: ignore[arg-type]
    smallest = smallest_input(model, in_chans=in_chans, **options) if in_chans else smallest_input(model, **options)
    if side < smallest:
        notes.append(f"{model} needs at least {smallest}x{smallest} input, so the images would be upscaled: estimated "
                     f"at its default {default}x{default} (convcanon train needs --image-size {smallest} or more)")
        return InputPlan(None, num_classes, in_chans, tuple(notes))  # type: ignore[arg-type]
    if not notes:
        notes.append(f"estimated at {side}x{side} (the model's default is {default}x{default})")
    return InputPlan(side, num_classes, in_chans, tuple(notes))  # type: ignore[arg-type]


def catalog_precision(amp: str, dev: Device) -> str:
    """``--amp`` on a catalog device, in the estimator's words: auto is bf16 where the device computes in bf16
    natively (as ``convcanon train`` resolves it), else fp32; off is fp32. Raises ValueError naming ``--amp``."""
    choice("--amp", amp, AMP_CHOICES)
    if amp == "auto":
        return "bf16" if dev.peak("bf16") else "fp32"
    precision = AMP_PRECISIONS[amp]
    if not dev.peak(precision):
        raise ValueError(f"--amp {amp} has no fast path on --device {dev.name}; choices there: "
                         f"{', '.join(dev.precisions())} (or auto)")
    return precision


MAX_EPOCHS = 100_000  # far past any real schedule, small enough that every figure derived from it stays finite


def priced_device(device: str | Device | None, precision: str, measured: Measurement | None) -> tuple[Device, str]:
    """The device a run is priced on and its precision: a catalog entry, or the measured local device."""
    if measured is None:
        if device is None:
            raise ValueError(f"give --device (one of: {', '.join(DEVICES)}) or --measure")
        dev = device if isinstance(device, Device) else get_device(device)
        return dev, catalog_precision(precision, dev)
    if device is not None:
        raise ValueError("--measure times this machine: leave out --device")
    choice("--amp", precision, AMP_CHOICES)
    if precision != "auto" and AMP_PRECISIONS[precision] != measured.precision:
        raise ValueError(f"--amp {precision} differs from the measured run's {measured.precision}")
    return measured.as_device(), measured.precision


def batches(batch_size: int | None, global_batch: int | None, replicas: int, devices: int) -> tuple[int, int]:
    """(per-device batch, global batch): ``--batch-size`` is per device as in train, ``--global-batch`` the images
    of one step (split evenly over the data-parallel replicas); not both."""
    if batch_size is not None and global_batch is not None:
        raise ValueError("give --batch-size (per device) or --global-batch (per step), not both")
    if global_batch is None:
        per_device = batch_size or DEFAULT_BATCH_PER_DEVICE
        return per_device, per_device * replicas
    if global_batch % replicas:
        raise ValueError(f"--global-batch {global_batch} must be a multiple of --devices {devices} (the global batch "
                         f"is split evenly)")
    return global_batch // replicas, global_batch


def check_flags(*, data: str | None, images: int | None, val_images: int | None, epochs: float, devices: int,
                 nodes: int | None, batch_size: int | None, global_batch: int | None, image_size: int | None,
                 network_gbit: float | None, link_gbs: float | None, epoch_overhead_s: float | None,
                 optimizer: str, parallel: str) -> None:
    if data is None and images is None:
        raise ValueError("give --data (a known data set) or --images N (your training-set size)")
    if data is not None:
        get_dataset(data)
    for flag, value in (("--devices", devices), ("--nodes", nodes), ("--images", images), ("--batch-size", batch_size),
                        ("--global-batch", global_batch), ("--image-size", image_size)):  # fmt: skip
        check_positive(flag, value)
    check_positive("--epochs", epochs, integer=False)
    if epochs > MAX_EPOCHS:
        raise ValueError(f"--epochs must be at most {MAX_EPOCHS:,} (the canon's runs take 16 to 600); got {epochs:g}")
    check_positive("--network-gbit", network_gbit, integer=False)
    check_positive("--link-gbs", link_gbs, integer=False)
    if val_images is not None and (isinstance(val_images, bool) or not isinstance(val_images, int) or val_images < 0):
        raise ValueError(f"--val-images must be an integer >= 0, got {val_images!r}")
    if epoch_overhead_s is not None and not epoch_overhead_s >= 0:
        raise ValueError(f"--epoch-overhead must be >= 0 seconds, got {epoch_overhead_s!r}")
    choice("--optimizer", optimizer, OPTIMIZERS)
    choice("--parallel", parallel, PARALLEL)


def check_layout(devices: int, nodes: int, parallel: str, measured: Measurement | None) -> None:
    if devices % nodes:
        raise ValueError(f"--devices {devices} cannot be spread evenly over --nodes {nodes}")
    if parallel == "towers" and (devices != 2 or nodes != 1):
        raise ValueError(f"--parallel towers is the paper's two-GPU AlexNet layout: it needs --devices 2 on one node, "
                         f"got --devices {devices} --nodes {nodes}")
    if measured is not None and devices != 1:
        raise ValueError("--measure times one local device: use --devices 1 (the scaling model needs a catalog "
                         "--device)")


@dataclass(frozen=True)
class RunSpec:
    """A run's settings as checked and resolved by :func:`run_spec`."""

    model: str
    data: str  # the data set's name, or "your data" for --images N
    in_memory: bool  # the data set is held in memory (no loader restart per epoch)
    train_images: int
    val_images: int
    epochs: float
    device: Device
    precision: str  # fp32 | tf32 | bf16 | fp16
    devices: int
    nodes: int
    parallel: str
    replicas: int  # data-parallel copies of the model (1 for towers)
    optimizer: str
    per_device_batch: int
    global_batch: int
    network_gbit: float | None
    link_gbs: float | None
    epoch_overhead_s: float | None
    ema_every: int = 0  # optimizer steps between updates of the weight average (--model-ema-steps); 0: no average
    ema_reason: str = ""  # why the average is on or off, as train says it


def run_spec(model: str, *, data: str | None, images: int | None, val_images: int | None, epochs: float,
             device: str | Device | None, devices: int, nodes: int | None, precision: str, batch_size: int | None,
             global_batch: int | None, optimizer: str, parallel: str, image_size: int | None,
             network_gbit: float | None, link_gbs: float | None, epoch_overhead_s: float | None,
             measured: Measurement | None, model_ema: bool | None = False, model_ema_steps: int = 1,
             in_memory: bool | None = None) -> RunSpec:
    """Check every setting of ``costmodel.estimate`` (whose docstring says what each means) and resolve the device,
    precision, node count and batches; nothing is built or measured."""
    check_flags(data=data, images=images, val_images=val_images, epochs=epochs, devices=devices, nodes=nodes,
                batch_size=batch_size, global_batch=global_batch, image_size=image_size, network_gbit=network_gbit,
                link_gbs=link_gbs, epoch_overhead_s=epoch_overhead_s, optimizer=optimizer, parallel=parallel)
    check_positive("--model-ema-steps", model_ema_steps)
    dataset = get_dataset(data) if data is not None else None
    dev, resolved = priced_device(device, precision, measured)
    ema, ema_reason = ema_choice(model_ema, data)
    if ema and measured is not None and measured.ema_update_s is None:
        raise ValueError("the measurement did not time the weight average's update: measure with model_ema=True "
                         "(the CLI's --measure does when --model-ema resolves on), or estimate with --no-model-ema")
    nodes = nodes or math.ceil(devices / dev.devices_per_node)
    check_layout(devices, nodes, parallel, measured)
    replicas = devices if parallel == "data" else 1
    per_device, global_b = batches(batch_size, global_batch, replicas, devices)
    train_images = images or dataset.train_images  # type: ignore[union-attr]
    if global_b > train_images:
        raise ValueError(f"the global batch ({global_b:,} images: {per_device:,} per device x {replicas:,} replicas) "
                         f"is larger than the training set ({train_images:,} images): one step would be more than an "
                         "epoch; lower --devices or --batch-size")
    val = val_images if val_images is not None else (dataset.val_images if dataset and images is None else 0)
    return RunSpec(
        model=model, data=dataset.name if dataset and images is None else "your data",
        in_memory=in_memory if in_memory is not None else dataset is not None and dataset.in_memory,
        train_images=train_images, val_images=val,
        epochs=epochs, device=dev, precision=resolved, devices=devices, nodes=nodes, parallel=parallel,
        replicas=replicas, optimizer=optimizer, per_device_batch=per_device, global_batch=global_b,
        network_gbit=network_gbit, link_gbs=link_gbs, epoch_overhead_s=epoch_overhead_s,
        ema_every=model_ema_steps if ema else 0, ema_reason=ema_reason,
    )  # fmt: skip
