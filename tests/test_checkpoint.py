import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from tinytamer.checkpoint import ARCH_KEY, load_checkpoint, read_metadata, save_checkpoint
from tinytamer.codec import arch
from tinytamer.errors import CodecError, ModelError


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.scale = (1.0, 2)  # a tuple attribute must survive as a tuple

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) * self.scale[0] + x)


def pruned_net() -> nn.Module:
    torch.manual_seed(0)
    # shapes no constructor default would give: what a channel-pruned model looks like
    m = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), Block(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 7))
    m[1].bn.running_mean.uniform_()
    m[1].bn.running_var.uniform_(0.5, 2)
    return m.eval()


def test_round_trip_is_exact_without_the_class_constructor(tmp_path):
    m = pruned_net()
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    m2 = load_checkpoint(path, allow=[__name__.split(".")[0] + "."])
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(m(x), m2(x))
    assert m2[1].scale == (1.0, 2)
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_class_outside_allow_list_is_refused(tmp_path):
    desc = arch.describe(nn.Linear(2, 2))
    desc["root"]["class"] = "os:system"
    with pytest.raises(CodecError, match="outside the allowed"):
        arch.build(json.loads(json.dumps(desc)))
    # the test module is not allowed unless the caller says so
    path = save_checkpoint(pruned_net(), tmp_path / "m.safetensors")
    with pytest.raises(CodecError, match="outside the allowed"):
        load_checkpoint(path)


def test_hooks_must_be_made_permanent_first():
    m = nn.Linear(4, 4)
    prune.l1_unstructured(m, "weight", amount=0.5)
    with pytest.raises(ModelError, match="hooks"):
        arch.describe(m)


def test_bad_files(tmp_path):
    with pytest.raises(CodecError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CodecError, match="junk.safetensors"):
        read_metadata(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CodecError, match="no architecture"):
        load_checkpoint(plain)
    assert ARCH_KEY not in read_metadata(plain)
