"""Backbones, weights and freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from pipeline.core.errors import ConfigError
from pipeline.ml.augment import BatchAugment
from pipeline.ml.device import Runtime
from pipeline.ml.losses import build_loss
from pipeline.ml.models import build_model, classification_archs
from pipeline.stages.train import train_one_epoch


def spec(**over: object) -> OmegaConf:
    base = {"arch": "resnet18", "weights": None, "freeze": [], "task": "all", "mask_groups": None}
    return OmegaConf.create({**base, **over})


def test_required_backbones_are_available() -> None:
    archs = classification_archs()
    for name in ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "efficientnet_b4",
                 "convnext_tiny"):  # fmt: skip
        assert name in archs
    model = build_model(spec(arch="efficientnet_b0"), 3)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_arch_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"not a torchvision classifier; valid: .*resnet18"):
        build_model(spec(arch="resnet19"), 18)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "resnet18.pth"
    with pytest.raises(ConfigError, match=rf"model weights {missing} not found"):
        build_model(spec(weights=str(missing)), 18)


def test_weights_load_into_the_backbone_and_the_head_is_replaced(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model(spec(weights=str(path)), 18)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.out_features == 18


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), path)
    with pytest.raises(ConfigError, match=r"mis-shape|do not fit"):
        build_model(spec(weights=str(path)), 18)


def test_a_pickled_object_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, path)  # a module, not tensors: needs pickle
    with pytest.raises(ConfigError, match="not a readable state dict"):
        build_model(spec(weights=str(path)), 18)


def test_unknown_frozen_module_lists_modules() -> None:
    with pytest.raises(ConfigError, match=r"cannot freeze 'layer9'.*layer1"):
        build_model(spec(freeze=["layer9"]), 18)


def test_frozen_layers_keep_their_weights_while_others_train() -> None:
    torch.manual_seed(0)
    model = build_model(spec(freeze=["layer1", "layer2"]), 18)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.randint(0, 256, (16, 3, 32, 24), dtype=torch.uint8)
    targets = torch.randint(0, 18, (16,))
    train_cfg = OmegaConf.create({"balanced_sampling": False, "batch_size": 8, "center_crop": None})
    train_one_epoch(
        model, optimizer, images, targets,
        rt=Runtime(torch.device("cpu"), "fp32", 2), train_cfg=train_cfg, num_classes=18,
        augment=BatchAugment(), loss_fn=build_loss({"ce": 1.0}, num_classes=18),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("layer1.", "layer2.")):
            assert torch.equal(after[key], value), key  # weights and batch-norm statistics
    assert not torch.equal(after["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
