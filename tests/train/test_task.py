"""The task: the loss, and what the training step calls so that GoogLeNet's auxiliary heads train."""

import torch
import torch.nn.functional as F

import convcanon
from convcanon.layers import ModelOutput
from convcanon.train.step import AuxForward, training_view
from convcanon.train.task import ClassificationTask


def test_models_without_auxiliary_heads_are_trained_as_they_are():
    model = convcanon.create_model("resnet20", num_classes=10)
    assert training_view(model) is model


def test_auxiliary_heads_train_through_the_wrapper_with_the_papers_weight():
    torch.manual_seed(0)
    model = convcanon.create_model("googlenet_cifar", num_classes=10, aux_heads=True).train()
    net = training_view(model)
    assert isinstance(net, AuxForward) and net.model is model
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]  # nothing copied
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    torch.manual_seed(1)
    out = net(x)
    assert isinstance(out, ModelOutput) and len(out.aux) == 2
    loss = ClassificationTask(aux_weight=0.3).loss(out, y)
    expected = F.cross_entropy(out.logits, y) + 0.3 * sum(F.cross_entropy(a, y) for a in out.aux)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in model.aux1.parameters()) and model.aux2.fc2.weight.grad is not None
    with torch.no_grad():
        assert net.eval()(x).aux == ()  # evaluation: the logits only, as the model's own forward


def test_label_smoothing_auto_is_the_main_jobs_recipe_on_the_digits_only():
    from convcanon.train.config import TrainConfig
    from convcanon.train.task import MAIN_JOB_LABEL_SMOOTHING, ClassificationTask, resolve_label_smoothing

    assert resolve_label_smoothing(TrainConfig()) == (MAIN_JOB_LABEL_SMOOTHING, "auto: the main job's recipe")
    for data in ("synthetic:3:8:10", "cifar10", "folder:/some/photos"):
        smoothing, why = resolve_label_smoothing(TrainConfig(data=data))
        assert smoothing == 0.0 and why.startswith("auto: off")  # the papers' recipes and torchvision's default
    assert resolve_label_smoothing(TrainConfig(data="cifar10", label_smoothing=0.2)) == (0.2, "as asked")
    assert resolve_label_smoothing(TrainConfig(label_smoothing=0.0)) == (0.0, "as asked")
    assert ClassificationTask.for_run(TrainConfig(data="cifar10", aux_weight=0.5)) == ClassificationTask(0.0, 0.5)
