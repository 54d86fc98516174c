"""A model file never runs code: the quantized graph is data over a closed table of ops.

Hostile files are real files - an int8 checkpoint and a ``.tt`` of a quantized model - whose
stored node list is hostile.  Each must fail with a clear CodecError when it is loaded,
before anything can run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tinytamer import codec, zoo
from tinytamer.checkpoint import load_checkpoint, save_checkpoint
from tinytamer.cli import app
from tinytamer.compress.int8 import quantize_ptq
from tinytamer.errors import CodecError, ModelError
from tinytamer.qgraph import _KINDS, OPS, QuantizedGraph, as_graph_module, is_quantized


class Net(nn.Module):
    """conv-relu, residual add, max pool, x.view(x.size(0), -1), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv0(x))
        x = self.pool(torch.relu(self.conv1(x) + x))
        return self.fc(x.view(x.size(0), -1))


@pytest.fixture(scope="module")
def quantized() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(2)]
    return quantize_ptq(Net().eval(), calib), torch.randn(6, 1, 8, 8, generator=g)


# ----------------------------------------------------------------------------- files

# Hostile files are written by the real savers from a QuantizedGraph whose records were
# replaced in memory: every checksum and digest is the saver's own, only the content is
# hostile.
FORMATS = {
    "checkpoint": (lambda m, p: save_checkpoint(m, p), load_checkpoint),
    "tt": (lambda m, p: codec.save(m, p).path, codec.load),
}


def ref(name: str) -> dict[str, Any]:
    return {"node": name}


def rec(op: str, name: str, target: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"op": op, "name": name, "target": target, "args": args, "kwargs": kwargs}


def _body(nodes: list[dict[str, Any]], body: list[dict[str, Any]], out: str) -> None:
    """Keep the input node, then ``body``, then one output of node ``out``."""
    nodes[1:] = body + [rec("output", "output", "output", ref(out))]


def _shell(marker: Path) -> str:
    return f"touch {marker}"


# Each mutation edits the record list in place (or returns a replacement for it).
def _old_getattr_chain(nodes: list, marker: Path) -> None:
    # The exploit the closed table stops, in the records the old format accepted (this chain ran the
    # shell command on the first forward pass before the table existed):
    # x.__class__.__reduce_ex__.__globals__['__builtins__']['__import__']('os').system(cmd)
    g = "builtins:getattr"
    _body(
        nodes,
        [
            rec("call_function", "cls", g, ref("x"), "__class__"),
            rec("call_function", "fn", g, ref("cls"), "__reduce_ex__"),
            rec("call_function", "glb", g, ref("fn"), "__globals__"),
            rec("call_function", "bi", "_operator:getitem", ref("glb"), "__builtins__"),
            rec("call_function", "imp", "_operator:getitem", ref("bi"), "__import__"),
            rec("call_method", "os", "__call__", ref("imp"), "os"),
            rec("call_method", "run", "system", ref("os"), _shell(marker)),
        ],
        "run",
    )


def _globals_via_get_attr(nodes: list, marker: Path) -> None:
    # The same through names from the table: get_attr reaches forward.__globals__.
    _body(
        nodes,
        [
            rec("get_attr", "glb", "forward.__globals__"),
            rec("call_function", "bi", "operator.getitem", ref("glb"), "__builtins__"),
            rec("call_method", "run", "Tensor.view", ref("bi"), _shell(marker)),
        ],
        "run",
    )


def _dunder_method(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_method", "cls", "__getattribute__", ref("x"), "__class__")], "cls")


def _dunder_table_name(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_method", "cls", "Tensor.__reduce_ex__", ref("x"), 2)], "cls")


def _unknown_op(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_function", "run", "os.system", _shell(marker))], "run")


def _string_where_node(nodes: list, marker: Path) -> None:
    # A table op given a string where it takes an index: strings are data only where listed.
    _body(nodes, [rec("call_function", "s", "operator.getitem", ref("x"), "__class__")], "s")


def _missing_module(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_module", "m", "no_such_layer", ref("x"))], "m")


def _dunder_module(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_module", "m", "aq_x.__class__", ref("x"))], "m")


def _root_module(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_module", "m", "", ref("x"))], "m")


def _forward_reference(nodes: list, marker: Path) -> None:
    nodes[1]["args"] = (ref(nodes[-2]["name"]),)


def _two_outputs(nodes: list, marker: Path) -> None:
    nodes.insert(len(nodes) - 1, rec("output", "output_1", "output", ref("x")))


def _output_not_last(nodes: list, marker: Path) -> None:
    nodes.append(rec("call_function", "after", "torch.relu", ref("x")))


def _no_output(nodes: list, marker: Path) -> None:
    nodes.pop()


def _unknown_node_kind(nodes: list, marker: Path) -> None:
    nodes[1]["op"] = "call_exec"


def _name_not_identifier(nodes: list, marker: Path) -> None:
    nodes[0]["name"] = "x; import os"


def _duplicate_name(nodes: list, marker: Path) -> None:
    nodes[2]["name"] = nodes[1]["name"]


def _dtype_outside_list(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_method", "s", "Tensor.softmax", ref("x"), 1, dtype={"dtype": "__class__"})], "s")


def _int_past_int64(nodes: list, marker: Path) -> None:
    _body(nodes, [rec("call_method", "v", "Tensor.view", ref("x"), 10**30)], "v")


def _nodes_not_a_list(nodes: list, marker: Path) -> dict:
    return {"op": "call_function"}


HOSTILE = {
    "old_getattr_chain": (_old_getattr_chain, r"node 1 \('cls'\).*'builtins:getattr'"),
    "globals_via_get_attr": (_globals_via_get_attr, r"node 1 \('glb'\) reads 'forward.__globals__'"),
    "dunder_method": (_dunder_method, r"node 1 \('cls'\).*'__getattribute__'.*not in the table"),
    "dunder_table_name": (_dunder_table_name, r"node 1 \('cls'\).*'Tensor.__reduce_ex__'"),
    "unknown_op": (_unknown_op, r"node 1 \('run'\).*'os.system'.*not in the table"),
    "string_where_node": (_string_where_node, r"node 1 \('s'\).*argument 1 \('index'\)"),
    "missing_module": (_missing_module, r"node 1 \('m'\) calls module 'no_such_layer'"),
    "dunder_module": (_dunder_module, r"node 1 \('m'\) calls module 'aq_x.__class__'"),
    "root_module": (_root_module, r"node 1 \('m'\) calls module ''"),
    "forward_reference": (_forward_reference, r"node 1 .*argument"),
    "two_outputs": (_two_outputs, r"is not the last node but an output"),
    "output_not_last": (_output_not_last, r"\('output'\) is not the last node but an output"),
    "no_output": (_no_output, r"is the last node but not the output"),
    "unknown_node_kind": (_unknown_node_kind, r"node 1 .*unknown node kind 'call_exec'"),
    "name_not_identifier": (_name_not_identifier, r"node 0 .*not a plain identifier"),
    "duplicate_name": (_duplicate_name, r"node 2 .*repeats an earlier node's name"),
    "dtype_outside_list": (_dtype_outside_list, r"node 1 \('s'\).*keyword argument 'dtype'"),
    "int_past_int64": (_int_past_int64, r"node 1 \('v'\).*argument 1 \('shape'\) is not a ints"),
    "nodes_not_a_list": (_nodes_not_a_list, r"node list is not a list"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_graph_fails_at_load_and_runs_nothing(quantized, tmp_path, fmt, case):
    gm, _ = quantized
    save, load = FORMATS[fmt]
    marker = tmp_path / "pwned"
    edit, message = HOSTILE[case]
    qg = QuantizedGraph(gm)
    qg.nodes = edit(qg.nodes, marker) or qg.nodes
    path = save(qg, tmp_path / f"m.{fmt}")
    with pytest.raises(CodecError, match=message) as err:
        load(path)
    assert "quantized graph" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_saved_and_loaded_model_is_bit_identical(quantized, tmp_path, fmt):
    gm, x = quantized
    save, load = FORMATS[fmt]
    loaded = load(save(QuantizedGraph(gm), tmp_path / f"q.{fmt}"))
    assert isinstance(loaded, QuantizedGraph) and is_quantized(loaded)
    with torch.no_grad():
        want = gm(x)
        assert torch.equal(loaded(x), want)
        assert torch.equal(as_graph_module(loaded)(x), want)


def test_cli_deploy_of_a_hostile_checkpoint_exits_2_and_runs_nothing(tmp_path):
    """The reported exploit, end to end: `tamer deploy --target torch --weights evil.safetensors`."""
    torch.manual_seed(0)
    gm = quantize_ptq(zoo.create("democnn", in_channels=1, input_size=8).eval(), [torch.randn(2, 1, 8, 8)])
    qg = QuantizedGraph(gm)
    marker = tmp_path / "pwned"
    _body(qg.nodes, [rec("call_function", "run", "os.system", _shell(marker))], "run")
    evil = save_checkpoint(qg, tmp_path / "evil.safetensors")
    out = CliRunner().invoke(
        app,
        [
            "deploy",
            "--target",
            "torch",
            "--weights",
            str(evil),
            "--runs",
            str(tmp_path / "runs"),
            "--data",
            "digits",
            "--size",
            "8",
        ],
    )
    assert out.exit_code == 2
    assert "node 1 ('run') names operation 'os.system'" in out.output
    assert not marker.exists()


def test_records_changed_after_load_are_refused_at_forward(quantized, tmp_path):
    gm, x = quantized
    loaded = load_checkpoint(save_checkpoint(QuantizedGraph(gm), tmp_path / "q.safetensors"))
    loaded.nodes[1] = {
        "op": "call_function",
        "name": "run",
        "target": "builtins:getattr",
        "args": ({"node": "x"}, "__class__"),
        "kwargs": {},
    }
    with pytest.raises(CodecError, match=r"node 1 \('run'\).*not in the table"):
        loaded(x)
    with pytest.raises(CodecError, match="not in the table"):
        as_graph_module(loaded)


def test_size_arithmetic_stays_in_int64(quantized, tmp_path):
    """Products of sizes from a file cannot grow without bound (a memory bomb of big ints)."""
    gm, x = quantized
    qg = QuantizedGraph(gm)
    qg.nodes = [
        qg.nodes[0],
        rec("call_function", "m", "operator.mul", 2**62, 2),
        rec("output", "output", "output", ref("m")),
    ]
    loaded = load_checkpoint(save_checkpoint(qg, tmp_path / "m.safetensors"))
    with pytest.raises(ModelError, match="mul gives an integer outside int64"):
        loaded(x)


def test_wrong_number_of_inputs_is_a_clear_error(quantized):
    gm, x = quantized
    with pytest.raises(ModelError, match=r"takes 1 input\(s\), got 2"):
        QuantizedGraph(gm)(x, x)


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def test_an_op_outside_the_table_cannot_be_saved():
    torch.manual_seed(0)
    gm = quantize_ptq(Tanh().eval(), [torch.randn(2, 1, 6, 6)])
    with pytest.raises(ModelError, match=r"graph node 'tanh'.*call_function 'tanh'"):
        QuantizedGraph(gm)


def test_table_kinds_are_all_known():
    assert {kind for op in OPS.values() for _, kind in op.params} <= set(_KINDS)
    assert all("__" not in name for name in OPS)


# Every zoo model the tests quantize (and ResNet-20's option-A shortcut: pad + getitem;
# ShuffleNetV2: chunk, cat, shape, reshape / transpose / flatten) is held by the table.
ZOO = {
    "lenet300": ({"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    "lenet5": ({"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    "democnn": ({"in_channels": 1, "input_size": 16}, (1, 16, 16)),
    "dscnn": ({"in_channels": 1, "num_classes": 12}, (1, 49, 10)),
    "resnet8": ({"in_channels": 3}, (3, 32, 32)),
    "resnet20": ({"in_channels": 3}, (3, 32, 32)),
    "mobilenetv2": ({"in_channels": 3, "input_size": 32}, (3, 32, 32)),
    "shufflenetv2": ({"in_channels": 3, "input_size": 32}, (3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_round_trip_through_the_table(tmp_path, name):
    kw, shape = ZOO[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gm = quantize_ptq(zoo.create(name, **kw).eval(), [torch.randn(2, *shape, generator=g)])
    loaded = codec.load(codec.save(QuantizedGraph(gm), tmp_path / "z.tt").path)
    x = torch.randn(2, *shape, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded(x), gm(x))
