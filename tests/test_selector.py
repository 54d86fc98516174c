import pytest
from torch import nn

from tinytamer.compress.selector import layer_params, parse, select
from tinytamer.errors import CompressError, ModelError


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.Linear(16, 10),
    )


def names(pairs):
    return [n for n, _ in pairs]


def test_default_selects_conv_and_linear_in_order():
    assert names(select(net())) == ["0", "2", "5", "6"]


def test_types_regex_exclude_first_last():
    m = net()
    assert names(select(m, {"types": ["Linear"]})) == ["5", "6"]
    assert names(select(m, {"regex": ["^[02]$"]})) == ["0", "2"]
    assert names(select(m, {"exclude": ["6"]})) == ["0", "2", "5"]
    assert names(select(m, {"exclude_first": True, "exclude_last": True})) == ["2", "5"]
    assert names(select(m, {"names": ["2", "6"]})) == ["2", "6"]


def test_overrides_first_match_wins():
    sel = {"overrides": {"^5$": {"bits": 5}, "[0-9]": {"bits": 4}}}
    assert layer_params(sel, "5", {"bits": 8}) == {"bits": 5}
    assert layer_params(sel, "0", {"bits": 8}) == {"bits": 4}
    assert layer_params(None, "0", {"bits": 8}) == {"bits": 8}


def test_unknown_name_is_named_with_suggestions():
    with pytest.raises(ModelError, match="'7'"):
        select(net(), {"names": ["7"]})


def test_nothing_selected_and_bad_keys():
    with pytest.raises(ModelError, match="picked no layer"):
        select(net(), {"types": ["LSTM"]})
    with pytest.raises(CompressError, match="select.typs"):
        parse({"typs": ["Conv2d"]})
    with pytest.raises(CompressError, match="not a valid regex"):
        select(net(), {"regex": ["("]})
