"""Zoo: published parameter / MAC counts, forward shapes, registry and import paths."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from tinytamer.errors import ModelError
from tinytamer.zoo import count, create, list_models, model_info, register_model
from tinytamer.zoo.registry import _REGISTRY

ALL = [
    "democnn",
    "dscnn",
    "lenet300",
    "lenet5",
    "mobilenetv2",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet8",
    "shufflenetv2",
]


def _default(name: str, **kwargs: object) -> tuple[nn.Module, tuple[int, ...]]:
    info = model_info(name)
    c, h, _ = info.input_shape
    model = create(name, num_classes=info.num_classes, in_channels=c, input_size=h, **kwargs)
    return model, info.input_shape


def test_registry_lists_every_model() -> None:
    assert set(ALL) <= set(list_models())
    assert list_models() == sorted(list_models())


# Exact figures: LeNets as in the pruning papers, ResNet-18 as the reference
# implementation, MobileNetV2 / ShuffleNetV2 as the reference implementations
# (papers: 3.5 M, 2.28 M, 1.37 M); DS-CNN and ResNet-8 by hand from the Keras
# references (see their module docstrings).
@pytest.mark.parametrize(
    ("name", "kwargs", "params"),
    [
        ("lenet300", {}, 266_610),
        ("lenet5", {}, 431_080),
        ("resnet18", {}, 11_689_512),
        ("mobilenetv2", {}, 3_504_872),
        ("shufflenetv2", {}, 2_278_604),
        ("shufflenetv2", {"width_mult": 0.5}, 1_366_792),
        ("resnet8", {}, 78_186),
        ("dscnn", {}, 23_756),
    ],
)
def test_exact_param_counts(name: str, kwargs: dict, params: int) -> None:
    model, shape = _default(name, **kwargs)
    assert count(model, shape).params == params


# He et al. 2016 Table 6 gives 0.27 M / 0.46 M / 0.85 M: within 1%.
@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("resnet20", 0.27),
        ("resnet32", 0.46),
        ("resnet56", 0.85),
    ],
)
def test_cifar_resnet_params_match_paper(name: str, millions: float) -> None:
    params = count(create(name), (3, 32, 32)).params
    assert params == pytest.approx(millions * 1e6, rel=0.01)


def test_resnet8_matches_keras_total_with_bn_statistics() -> None:
    model = create("resnet8")
    bn_stats = sum(
        m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    assert count(model, (3, 32, 32)).params + bn_stats == 78_666


def test_option_a_shortcut_has_no_params_option_b_has() -> None:
    a = count(create("resnet20"), (3, 32, 32)).params
    b = count(create("resnet20", shortcut="B"), (3, 32, 32)).params
    # Two projections: 16->32 and 32->64 1x1 convs, each with BN (2 params / channel).
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize(
    ("name", "kwargs", "macs", "rel"),
    [
        ("lenet5", {}, 288_000 + 1_600_000 + 400_000 + 5_000, 0),  # by hand, exact
        ("resnet8", {}, 12_501_632, 0),  # by hand, exact
        ("dscnn", {}, 320_000 + 4 * (72_000 + 512_000) + 768, 0),  # by hand, exact
        ("resnet18", {}, 1.82e9, 0.01),
        ("resnet20", {}, 41e6, 0.02),
        ("mobilenetv2", {}, 300e6, 0.01),
        ("shufflenetv2", {}, 146e6, 0.01),
        ("shufflenetv2", {"width_mult": 0.5}, 41e6, 0.02),
    ],
)
def test_macs(name: str, kwargs: dict, macs: float, rel: float) -> None:
    model, shape = _default(name, **kwargs)
    assert count(model, shape).macs == pytest.approx(macs, rel=rel)


def test_per_layer_breakdown_sums_to_totals() -> None:
    model, shape = _default("lenet5")
    model.train()
    counts = count(model, shape)
    assert model.training  # count() evaluates in eval mode and restores the mode
    convs = [r for r in counts.per_layer if r["type"] == "Conv2d"]
    assert [r["output_shape"] for r in convs] == [(1, 20, 24, 24), (1, 50, 8, 8)]
    assert [r["macs"] for r in convs] == [24 * 24 * 20 * 25, 8 * 8 * 50 * 20 * 25]
    assert sum(r["macs"] for r in counts.per_layer) == counts.macs
    assert sum(r["params"] for r in counts.per_layer) == counts.params


def test_per_layer_attributes_functional_matmul_to_its_module() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.proj(x)
            return q @ q.transpose(-1, -2)  # 4x8 @ 8x4: 128 MACs done by Attn itself

    counts = count(Attn(), (4, 8))
    rows = {r["name"]: r for r in counts.per_layer}
    assert rows["proj"]["macs"] == 4 * 8 * 8
    assert rows[""]["macs"] == 4 * 8 * 4
    assert counts.macs == 4 * 8 * 8 + 4 * 8 * 4
    assert sum(r["macs"] for r in counts.per_layer) == counts.macs


def test_nonzero_params_counts_pruned_weights() -> None:
    model = create("lenet300", in_channels=1, input_size=28)
    before = count(model, (1, 28, 28))
    with torch.no_grad():
        model[1].weight[:, :392] = 0
    after = count(model, (1, 28, 28))
    assert after.params == before.params
    assert after.nonzero_params == before.nonzero_params - 300 * 392


def test_nonzero_params_sees_torch_prune_masks() -> None:
    model = create("lenet300", in_channels=1, input_size=28)
    before = count(model, (1, 28, 28)).nonzero_params
    prune.l1_unstructured(model[1], "weight", amount=0.5)
    assert count(model, (1, 28, 28)).nonzero_params == before - 300 * 784 // 2


@pytest.mark.parametrize("name", ALL)
def test_forward_default_input_batch_2(name: str) -> None:
    info = model_info(name)
    c, h, _ = info.input_shape
    # Big ImageNet models run at 32x32 (their small-input variant) to keep this fast.
    size = min(h, 32) if info.input_shape[1] == info.input_shape[2] else h
    model = create(name, num_classes=7, in_channels=c, input_size=size).eval()
    shape = (c, size, size) if info.input_shape[1] == info.input_shape[2] else info.input_shape
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("lenet5", {"in_channels": 3, "input_size": 32}, (3, 32, 32)),
        ("lenet300", {"in_channels": 1, "input_size": 16}, (1, 16, 16)),
        ("resnet18", {"input_size": 32}, (3, 32, 32)),
        ("resnet18", {"input_size": 64, "stem": "cifar"}, (3, 64, 64)),
        ("mobilenetv2", {"input_size": 96, "width_mult": 0.35}, (3, 96, 96)),
        ("dscnn", {"input_hw": (40, 12)}, (1, 40, 12)),
        ("democnn", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    ],
)
def test_other_input_sizes(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    kwargs.setdefault("in_channels", shape[0])
    model = create(name, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 10)


def test_stem_choice_follows_input_size() -> None:
    assert count(create("resnet18", input_size=32), (3, 32, 32)).per_layer[0]["output_shape"] == (1, 64, 32, 32)
    assert count(create("resnet18", input_size=64), (3, 64, 64)).per_layer[0]["output_shape"] == (1, 64, 32, 32)
    last = count(create("mobilenetv2", input_size=32), (3, 32, 32)).per_layer[-1]
    assert last["type"] == "Linear"
    features = [r for r in count(create("mobilenetv2", input_size=32), (3, 32, 32)).per_layer if r["type"] == "ReLU6"]
    assert features[-1]["output_shape"] == (1, 1280, 4, 4)


def test_relus_are_modules() -> None:
    for name in ALL:
        model, _ = _default(name)
        assert any(isinstance(m, nn.ReLU | nn.ReLU6) for m in model.modules()), name


def test_convs_are_kaiming_normal() -> None:
    model = create("resnet56")
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3: fan_out = 576
    std = conv.weight.std().item()
    assert std == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet999'.*lenet5"):
        create("resnet999")


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(ModelError, match="width_mult"):
        create("resnet20", width_mult=0.5)
    with pytest.raises(ModelError, match="width_mult must be one of"):
        create("shufflenetv2", width_mult=0.7)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_zoo_models.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def make_net(num_classes, hidden=4):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

        def make_any(**kwargs):
            return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])

        def not_a_model():
            return 42

        def needs_depth(depth):
            return nn.Identity()

        NOT_CALLABLE = 3
    """)
    )
    (tmp_path / "my_broken_models.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_zoo_models"
    sys.modules.pop("my_zoo_models", None)
    sys.modules.pop("my_broken_models", None)


def test_import_path_model(user_module: str) -> None:
    model = create(f"{user_module}:make_net", num_classes=5, hidden=6)
    assert model(torch.randn(2, 3, 4)).shape == (2, 5)
    assert model[1].out_features == 6
    any_model = create(f"{user_module}:make_any", num_classes=4, in_channels=9)
    assert (any_model.in_features, any_model.out_features) == (9, 4)


def test_bad_import_paths(user_module: str) -> None:
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg_xyz.models'"):
        create("no_such_pkg_xyz.models:make")
    with pytest.raises(ModelError, match="cannot import module 'my_broken_models'.*SyntaxError"):
        create("my_broken_models:oops")
    with pytest.raises(ModelError, match="'my_zoo_models' has no attribute 'missing'"):
        create(f"{user_module}:missing")
    with pytest.raises(ModelError, match="is not callable"):
        create(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(ModelError, match="returned int"):
        create(f"{user_module}:not_a_model")
    with pytest.raises(ModelError, match="needs argument.*depth"):
        create(f"{user_module}:needs_depth")
    with pytest.raises(ModelError, match="does not accept.*colour"):
        create(f"{user_module}:make_net", colour="red")
    with pytest.raises(ModelError, match="expected 'package.module:factory'"):
        create(":make_net")


def test_register_model_decorator() -> None:
    @register_model("test_tiny_linear", input_shape=(4,), num_classes=2)
    def tiny(num_classes: int = 2) -> nn.Module:
        return nn.Linear(4, num_classes)

    try:
        assert "test_tiny_linear" in list_models()
        assert create("test_tiny_linear", num_classes=3).out_features == 3
        assert model_info("test_tiny_linear").input_shape == (4,)
        with pytest.raises(ModelError, match="already registered"):
            register_model("test_tiny_linear")(lambda: nn.Identity())
    finally:
        _REGISTRY.pop("test_tiny_linear")


def test_count_rejects_bad_shapes() -> None:
    with pytest.raises(ModelError, match="input_shape"):
        count(create("lenet5"), (1, -2, 28))
    with pytest.raises(ModelError, match="failed on an input of shape"):
        count(create("lenet300", in_channels=1, input_size=28), (1, 16, 16))


def test_democnn_learns_sklearn_digits(digits_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    x, y = digits_data
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    perm = torch.randperm(len(y))
    train, test = perm[:1400], perm[1400:]
    model = create("democnn", in_channels=1, input_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        for idx in train[torch.randperm(len(train))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.9
