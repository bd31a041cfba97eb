"""What the estimator knows about hardware and data sets: data, not code.

Every figure is the vendor's (or the paper's) nominal number, with its source on the line. Peak throughput is dense
arithmetic (no 2:4 sparsity), in TFLOP/s, counting a multiply-add as 2 FLOPs; ``None`` means the precision has no
fast path on that device (a run in it is refused rather than silently priced at fp32 speed). Bandwidths are in GB/s
(10^9 bytes) per direction: ``memory_gbs`` is DRAM bandwidth; ``intra_node_gbs`` is what one device can push into the
node's gradient ring (PCIe or NVLink); ``inter_node_gbs`` is one node's total network bandwidth (all its NICs), the
default that ``--network-gbit`` overrides.

How well software uses these peaks is not a property of the device and lives with the cost model
(:mod:`convcanon.estimate.model`), except two facts about the software each entry stands for: ``arch`` (which
calibrated efficiency applies) and ``winograd`` (whether the convolution library runs 3x3 convolutions with Winograd's
algorithm in fp32: cuDNN >= 5 does, cuda-convnet in 2012 did not).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    year: int
    arch: str  # fermi | kepler | pascal | volta | ampere | hopper | cpu: picks the calibrated efficiency
    peak_tflops: dict[str, float | None]  # per precision, dense
    memory_gib: float
    memory_gbs: float
    intra_node_gbs: float  # per device, per direction, into the node's all-reduce ring
    inter_node_gbs: float  # per node, per direction, all NICs together
    devices_per_node: int  # the usual box: sets --nodes when it is not given
    winograd: bool  # fp32 3x3 stride-1 convolutions run with Winograd (cuDNN >= 5)
    sources: tuple[str, ...] = field(default=(), repr=False)

    def peak(self, precision: str) -> float | None:
        return self.peak_tflops.get(precision)

    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if self.peak_tflops.get(p))

    def as_row(self) -> dict[str, object]:
        row: dict[str, object] = {"device": self.name, "year": str(self.year), "description": self.description}
        row.update({f"{p}_tflops": self.peak_tflops.get(p) for p in PRECISIONS})
        row.update(memory_gib=round(self.memory_gib, 1), memory_gbs=self.memory_gbs, intra_node_gbs=self.intra_node_gbs,
                   inter_node_gbit=round(self.inter_node_gbs * 8, 1), devices_per_node=self.devices_per_node)
        return row


def _gbit(gbit_per_s: float) -> float:
    """Network line rates are quoted in Gbit/s; the catalog keeps GB/s."""
    return gbit_per_s / 8


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device(
            "gtx580", "NVIDIA GeForce GTX 580 3GB (Fermi), the AlexNet paper's GPU", 2010, "fermi",
            # 512 CUDA cores x 1544 MHz shader clock x 2 FLOPs = 1581 GFLOP/s; no fp16/bf16/tf32 arithmetic.
            {"fp32": 1.581, "tf32": None, "bf16": None, "fp16": None},
            memory_gib=3 * 1000**3 / 1024**3,  # the 3 GB board of Krizhevsky et al. 2012, section 3.2
            memory_gbs=192.4,
            intra_node_gbs=8.0,  # PCIe 2.0 x16: 500 MB/s x 16 lanes per direction
            inter_node_gbs=_gbit(10),  # a 10 GbE workstation; the paper used one machine
            devices_per_node=2, winograd=False,  # cuda-convnet (2012) convolves directly
            sources=(
                "https://www.nvidia.com/en-us/geforce/graphics-cards/geforce-gtx-580/specifications/",
                "Krizhevsky, Sutskever, Hinton 2012, section 3.2: two GTX 580 3GB GPUs",
            ),
        ),
        Device(
            "k80", "NVIDIA Tesla K80, one GK210 GPU (half a board, as CUDA and clouds count it)", 2014, "kepler",
            # 2496 cores x 875 MHz boost x 2 = 4.37 TFLOP/s per GK210 (the board: 8.73 with both GPUs).
            {"fp32": 4.37, "tf32": None, "bf16": None, "fp16": None},
            memory_gib=12 * 1000**3 / 1024**3,  # 24 GB GDDR5 per board, 12 per GPU
            memory_gbs=240.0,  # 480 GB/s per board
            intra_node_gbs=8.0,  # both GPUs of a board share one PCIe 3.0 x16 link (15.75 GB/s) through a switch
            inter_node_gbs=_gbit(10),  # EC2 p2.8xlarge (8 GPUs): 10 Gbit/s
            devices_per_node=8, winograd=True,
            sources=(
                "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-product-literature/"
                "Tesla-K80-BoardSpec-07317-001-v05.pdf",
                "https://aws.amazon.com/ec2/instance-types/p2/",
            ),
        ),
        Device(
            "p100", "NVIDIA Tesla P100 SXM2 16GB (Pascal, NVLink), as in Goyal et al.'s Big Basin servers", 2016,
            "pascal",
            {"fp32": 10.6, "tf32": None, "bf16": None, "fp16": 21.2},  # fp16 via paired half2 math, no tensor cores
            memory_gib=16 * 1000**3 / 1024**3, memory_gbs=732.0,
            # NVLink 1.0: 4 links x 20 GB/s per direction; NCCL's rings in the 8-GPU hybrid cube-mesh use 2 of them.
            intra_node_gbs=40.0,
            inter_node_gbs=_gbit(50),  # Big Basin: one Mellanox ConnectX-4 50 Gbit Ethernet NIC per 8-GPU server
            devices_per_node=8, winograd=True,
            sources=(
                "https://images.nvidia.com/content/tesla/pdf/nvidia-tesla-p100-datasheet.pdf",
                "Goyal et al. 2017, 'Accurate, Large Minibatch SGD', section 5.1 (hardware)",
            ),
        ),
        Device(
            "p100-pcie", "NVIDIA Tesla P100 PCIe 16GB (Pascal), 4 per server on 25 GbE as in the Horovod benchmark",
            2016, "pascal",
            {"fp32": 9.3, "tf32": None, "bf16": None, "fp16": 18.7},
            memory_gib=16 * 1000**3 / 1024**3, memory_gbs=732.0,
            intra_node_gbs=15.75,  # PCIe 3.0 x16
            inter_node_gbs=_gbit(25),  # "RoCE-capable 25 Gbit/s network" (Horovod README / Sergeev & Del Balso 2018)
            devices_per_node=4, winograd=True,
            sources=(
                "https://images.nvidia.com/content/tesla/pdf/nvidia-tesla-p100-PCIe-datasheet.pdf",
                "https://github.com/horovod/horovod/blob/master/docs/benchmarks.rst",
            ),
        ),
        Device(
            "v100-16gb", "NVIDIA Tesla V100 SXM2 16GB (Volta), DGX-1", 2017, "volta",
            {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0},  # fp16: tensor cores
            memory_gib=16 * 1000**3 / 1024**3, memory_gbs=900.0,
            intra_node_gbs=150.0,  # NVLink 2.0: 6 links x 25 GB/s per direction
            inter_node_gbs=_gbit(400),  # DGX-1: 4x 100 Gbit/s InfiniBand EDR
            devices_per_node=8, winograd=True,
            sources=(
                "https://images.nvidia.com/content/technologies/volta/pdf/tesla-volta-v100-datasheet-letter-fnl-web.pdf",
                "https://docs.nvidia.com/dgx/dgx1-user-guide/introduction-to-dgx1.html",
            ),
        ),
        Device(
            "v100", "NVIDIA Tesla V100 SXM2 32GB (Volta), DGX-1/DGX-2", 2018, "volta",
            {"fp32": 15.7, "tf32": None, "bf16": None, "fp16": 125.0},
            memory_gib=32 * 1000**3 / 1024**3, memory_gbs=900.0,
            intra_node_gbs=150.0, inter_node_gbs=_gbit(400),
            devices_per_node=8, winograd=True,
            sources=(
                "https://images.nvidia.com/content/technologies/volta/pdf/tesla-volta-v100-datasheet-letter-fnl-web.pdf",
            ),
        ),
        Device(
            "a100", "NVIDIA A100 SXM4 80GB (Ampere), DGX A100", 2020, "ampere",
            {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
            memory_gib=80 * 1000**3 / 1024**3, memory_gbs=2039.0,
            intra_node_gbs=300.0,  # NVLink 3: 600 GB/s total, 300 per direction
            inter_node_gbs=_gbit(1600),  # DGX A100: 8x 200 Gbit/s HDR InfiniBand
            devices_per_node=8, winograd=True,
            sources=(
                "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                "nvidia-a100-datasheet-nvidia-us-2188504-web.pdf",
                "https://docs.nvidia.com/dgx/dgxa100-user-guide/introduction-to-dgxa100.html",
            ),
        ),
        Device(
            "h100", "NVIDIA H100 SXM5 80GB (Hopper), DGX H100", 2022, "hopper",
            {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # dense; the datasheet's x2 is 2:4 sparse
            memory_gib=80 * 1000**3 / 1024**3, memory_gbs=3350.0,
            intra_node_gbs=450.0,  # NVLink 4: 900 GB/s total
            inter_node_gbs=_gbit(3200),  # DGX H100: 8x 400 Gbit/s NDR InfiniBand
            devices_per_node=8, winograd=True,
            sources=(
                "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
                "https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-dgxh100.html",
            ),
        ),
        Device(
            "h200", "NVIDIA H200 SXM 141GB (Hopper, HBM3e), DGX H200", 2024, "hopper",
            {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},  # the H100's compute
            memory_gib=141 * 1000**3 / 1024**3, memory_gbs=4800.0,
            intra_node_gbs=450.0, inter_node_gbs=_gbit(3200),
            devices_per_node=8, winograd=True,
            sources=("https://www.nvidia.com/en-us/data-center/h200/",),
        ),
        Device(
            "cpu", "a generic 2-core x86 CPU (CI runner class); use --measure for the machine at hand", 2020, "cpu",
            # 2 cores x 3.0 GHz x 32 fp32 FLOPs/cycle (two 8-wide FMA pipes). bf16 needs AVX512-BF16 or AMX: not
            # generic, so refused here; --measure times it where the CPU has it.
            {"fp32": 0.192, "tf32": None, "bf16": None, "fp16": None},
            memory_gib=8.0,
            memory_gbs=20.0,  # a 2-core share of dual-channel DDR4
            intra_node_gbs=10.0,  # processes on one host exchange through shared memory
            inter_node_gbs=_gbit(10),
            devices_per_node=1, winograd=False,  # oneDNN picks direct/GEMM convolution for training by default
            sources=("vendor ISA manuals: AVX2/AVX-512 FMA throughput 2 per cycle",),
        ),
    )
}


def get_device(name: str) -> Device:
    if name not in DEVICES:
        close = difflib.get_close_matches(name.lower(), list(DEVICES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--device {name!r} is not in the catalog{hint}; choices: {', '.join(DEVICES)}")
    return DEVICES[name]


@dataclass(frozen=True)
class DataSet:
    name: str
    train_images: int
    val_images: int
    image_size: int | None  # None: the model's own default input size (ImageNet-style crops)
    in_chans: int
    num_classes: int
    in_memory: bool  # held as tensors (no per-epoch loader restart), or decoded from files by worker processes
    source: str


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet("imagenet", 1_281_167, 50_000, None, 3, 1000, False, "ILSVRC-2012 (Russakovsky et al. 2015)"),
        DataSet("cifar10", 50_000, 10_000, 32, 3, 10, True, "Krizhevsky 2009"),
        DataSet("cifar100", 50_000, 10_000, 32, 3, 100, True, "Krizhevsky 2009"),
        DataSet("mnist", 60_000, 10_000, 28, 1, 10, True, "LeCun et al. 1998"),
        DataSet("fashion-mnist", 60_000, 10_000, 28, 1, 10, True, "Xiao et al. 2017"),
        DataSet("digits", 1_437, 360, 8, 1, 10, True, "scikit-learn load_digits, convcanon's 80/20 split (embedded)"),
    )
}


def get_dataset(name: str) -> DataSet:
    if name not in DATASETS:
        close = difflib.get_close_matches(name.lower(), list(DATASETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--data {name!r} is not a known data set{hint}; choices: {', '.join(DATASETS)} "
                         f"(or give --images N for your own)")
    return DATASETS[name]
