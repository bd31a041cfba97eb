"""The model contract: :class:`CanonModel`, the base class of every model of the zoo (documented in ``models``)."""

import re
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx
from torch import Tensor, nn

from ..layers import Head, ModelOutput, check_dropout, check_head, check_input, class_layer

torch.fx.wrap("check_input")  # one opaque call in an fx graph: symbolic tracing cannot branch on the input's shape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's training set, per channel on the 0..1 scale (what the data module's channel_stats computes).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def weighted_groups(prefix: str, seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The children of ``seq`` grouped so that each group starts at a conv or Linear layer and holds what follows it
    (norm, activation, pool, dropout); anything before the first one joins the first group. Each group is named by
    its first child (``features.3``) and is a new Sequential holding the children themselves."""
    return [(name, nn.Sequential(*mods)) for name, mods in _groups(prefix, seq)]


def _groups(prefix: str, seq: nn.Sequential) -> list[tuple[str, list[nn.Module]]]:
    groups: list[tuple[str, list[nn.Module]]] = []
    for name, child in seq.named_children():
        if not groups or (_weighted(child) and any(_weighted(m) for m in groups[-1][1])):
            groups.append((f"{prefix}.{name}", [child]))
        else:
            groups[-1][1].append(child)
    return groups


def _weighted(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def holds_values(model: nn.Module) -> bool:
    """False for a model built on the meta device (shapes only, as the settings check and the estimator build it):
    its initialization is skipped, since there is nothing to set and torch's meta ``normal_`` imports torch._dynamo,
    2.4 s of every command's start-up."""
    return not any(p.is_meta for p in model.parameters())


class CanonModel(nn.Module):
    """The base class of every model of the zoo: the contract the rest of the package (and timm) relies on.

    Subclasses build their layers, then call :meth:`set_head`, and set ``num_features``, ``min_size``,
    ``feature_info`` and ``pretrained_cfg`` (:meth:`describe`); they implement :meth:`forward_features` and
    :meth:`feature_blocks`. Everything else is here, once.
    """

    classifier_name: ClassVar[str] = "fc"  # attribute holding the classifier: "fc" (ResNet, GoogLeNet), "classifier"
    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations and has no Module type
        avgpool: nn.Module
        dropout: nn.Module
        fc: nn.Module

    name: str
    in_chans: int
    num_classes: int
    num_features: int
    head_hidden_size: int
    min_size: int
    has_aux: bool
    grad_checkpointing: bool
    feature_info: list[dict[str, Any]]
    pretrained_cfg: dict[str, Any]

    def __init__(self, *, name: str, in_chans: int, num_classes: int, head: str, dropout: float) -> None:
        """Check the switches every model has, before anything is built."""
        super().__init__()
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"{name}: in_chans must be an integer >= 1, got {in_chans!r}")
        check_head(head, num_classes)
        check_dropout(dropout)
        self.name, self.in_chans, self.num_classes = name, in_chans, num_classes
        self.has_aux = False
        self.grad_checkpointing = False

    # ---- forward

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_input(x, in_chans=self.in_chans, min_size=self.min_size, model=self.name)
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the head: ``(N, num_features, h, w)``."""
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout, classifier. ``pre_logits=True`` stops before the class layer (timm): the pooled features
        (``num_features`` wide) or the FC tower's hidden features (``head_hidden_size`` wide)."""
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        if isinstance(self.fc, nn.Sequential):  # the FC tower: every layer but the last (the class layer) is pre-logits
            last = len(self.fc) - 1
            for index, layer in enumerate(self.fc):  # a loop, not a slice: fx and TorchScript see the model's modules
                if index < last or not pre_logits:
                    x = layer(x)
        elif not pre_logits:
            x = self.fc(x)
        return x

    def forward_with_aux(self, x: Tensor) -> ModelOutput:
        """The logits and the auxiliary classifiers' logits (only GoogLeNet has any, in training mode)."""
        return ModelOutput(self(x), ())

    # ---- structure

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """The body as an ordered chain whose composition is :meth:`forward_features`."""
        raise NotImplementedError

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The model as an ordered chain ``(name, module)`` whose composition is ``forward`` (without the input
        check): the feature blocks, then the head, whose pooling joins the first classifier layer and whose FC tower
        is split so that each Linear starts a block. The modules are the model's own (a group of several is a new
        Sequential holding them): nothing is copied. Auxiliary heads (``has_aux``) branch off this chain in training.
        """
        name = self.classifier_name
        lead = [self.avgpool, nn.Flatten(1)] + ([self.dropout] if name == "fc" else [])
        classifier = getattr(self, name)
        if isinstance(classifier, nn.Sequential) and sum(_weighted(m) for m in classifier) > 1:
            groups = _groups(name, classifier)
            groups[0] = (groups[0][0], [*lead, *groups[0][1]])
        else:
            groups = [(name, [*lead, classifier])]
        head = [(group_name, nn.Sequential(*mods)) for group_name, mods in groups]
        return [*self.feature_blocks(), *head]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each feature block's activations in backward instead of keeping them (``layers.checkpoint_seq``).

        Gradients and batch-norm statistics are those of the plain model; no module changes."""
        self.grad_checkpointing = enable

    def set_head(self, head: Head) -> None:
        """Register the head built by ``layers.make_head`` under the family's names (torchvision's state-dict keys)."""
        self.avgpool = head.pool
        if self.classifier_name == "fc":
            self.dropout = head.dropout
        elif not isinstance(head.dropout, nn.Identity):
            raise ValueError(f"{self.name}: this layout keeps the head's dropout inside its classifier")
        self.add_module(self.classifier_name, head.classifier)
        self.head_hidden_size = head.hidden

    def describe(self, *, image_size: int, stages: list[dict[str, Any]]) -> None:
        """Set ``feature_info`` (the stages: channels, reduction, module) and ``pretrained_cfg`` (timm's data config:
        the nominal input, its preprocessing, the first conv and the classifier)."""
        self.feature_info = stages
        small = image_size <= 64  # the small-image models are the CIFAR-10 models of their papers
        mean: tuple[float, ...] = CIFAR10_MEAN if small else IMAGENET_MEAN
        std: tuple[float, ...] = CIFAR10_STD if small else IMAGENET_STD
        if self.in_chans != 3:  # one statistic for every channel: the average of the RGB ones
            mean = (sum(mean) / 3,) * self.in_chans
            std = (sum(std) / 3,) * self.in_chans
        first_conv = next(n for n, m in self.named_modules() if isinstance(m, nn.Conv2d))
        self.pretrained_cfg = {
            "architecture": self.name, "input_size": (self.in_chans, image_size, image_size),
            "min_input_size": (self.in_chans, self.min_size, self.min_size), "fixed_input_size": False,
            "interpolation": "bilinear", "crop_pct": 1.0 if small else 0.875, "crop_mode": "center",
            "mean": tuple(round(v, 4) for v in mean), "std": tuple(round(v, 4) for v in std),
            "num_classes": self.num_classes, "first_conv": first_conv, "classifier": self._classifier_path(),
        }  # fmt: skip

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    # ---- timm's interface

    def get_classifier(self) -> nn.Module:
        """The layer that outputs the logits (an ``nn.Identity`` when ``num_classes`` is 0)."""
        classifier = getattr(self, self.classifier_name)
        return classifier[-1] if isinstance(classifier, nn.Sequential) else classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialized class layer for ``num_classes`` classes; 0 removes it (the head then ends at
        its pre-logits features). ``global_pool`` may only be None or "avg": the pooling is part of the layout."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"{self.name}: global_pool must be 'avg' (or None), got {global_pool!r}")
        check_head("avgpool", num_classes)
        new = class_layer(self.head_hidden_size, num_classes)
        like = next(iter(self.get_classifier().parameters()), None)
        like = next(self.parameters()) if like is None else like
        new.to(device=like.device, dtype=like.dtype)
        classifier = getattr(self, self.classifier_name)
        if isinstance(classifier, nn.Sequential):
            classifier[-1] = new
        else:
            self.add_module(self.classifier_name, new)
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes,
                               "classifier": self._classifier_path()}  # fmt: skip

    def _classifier_path(self) -> str:
        classifier = getattr(self, self.classifier_name)
        if isinstance(classifier, nn.Sequential):
            return f"{self.classifier_name}.{len(classifier) - 1}"
        return self.classifier_name

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The outputs of the stages of ``feature_info`` (timm): ``indices`` None for all, n for the last n, or a list
        (negative from the end). Returns ``(final features, intermediates)``, or the intermediates only. ``norm`` has
        no effect (no model here ends in a norm); ``stop_early`` stops after the last stage asked for."""
        if output_fmt != "NCHW":
            raise ValueError(f"{self.name}: output_fmt must be 'NCHW', got {output_fmt!r}")
        check_input(x, in_chans=self.in_chans, min_size=self.min_size, model=self.name)
        take = self._take_indices(indices)
        ends = self._stage_ends()
        wanted = {ends[i]: i for i in take}
        blocks = self.feature_blocks()
        stop = max(wanted) + 1 if stop_early or intermediates_only else len(blocks)
        intermediates = []
        for index, (_, block) in enumerate(blocks[:stop]):
            x = block(x)
            if index in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def _take_indices(self, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
        n = len(self.feature_info)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"{self.name}: indices={indices} asks for the last {indices} of {n} stages")
            return list(range(n - indices, n))
        take = sorted(i % n if -n <= i < n else n for i in indices)
        if n in take:
            raise ValueError(f"{self.name}: indices {list(indices)} out of range for {n} stages")
        return take

    def _stage_ends(self) -> list[int]:
        """For each stage of ``feature_info``, the index of the last feature block holding part of its module."""
        blocks = self.feature_blocks()
        ends = []
        for stage in self.feature_info:
            inside = {id(m) for m in self.get_submodule(stage["module"]).modules()}
            ends.append(max(i for i, (_, b) in enumerate(blocks) if any(id(m) in inside for m in b.modules())))
        return ends

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm (layer-wise learning-rate decay): the stem is the first feature block; each
        further block is a group (``coarse``: each stage); the head matches nothing, so it comes last."""
        names = {id(m): n for n, m in self.named_modules()}
        blocks = self.feature_blocks()
        ends = self._stage_ends()

        def pattern(block: nn.Module) -> str:
            members = [block] if id(block) in names else list(block.children())
            return r"^(?:" + "|".join(re.escape(names[id(m)]) for m in members) + r")\."

        groups = []
        for index, (_, block) in enumerate(blocks[1:], start=1):
            stage = next((s for s, end in enumerate(ends) if index <= end), len(ends))
            groups.append((pattern(block), (stage if coarse else index,)))
        return {"stem": pattern(blocks[0][1]), "blocks": groups}
