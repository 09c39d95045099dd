"""The selector grammar: exact name, re:, type:, ignore wins, no match is an error."""

import pytest
from torch import nn

from compress.core.errors import EdgetierError
from compress.core.selectors import matches, select


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU()),
        nn.Sequential(nn.Conv1d(4, 8, 3, groups=4), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def test_exact_name_regex_and_type():
    model = _model()
    assert matches(model, "0.0") == ["0.0"]
    assert matches(model, "re:[01]\\.0") == ["0.0", "1.0"]
    # full match, not search: "0" alone must not match "0.0"
    assert matches(model, "re:0") == ["0"]
    assert matches(model, "type:Conv1d") == ["0.0", "1.0"]
    # base classes count: every conv is a _ConvNd
    assert matches(model, "type:_ConvNd") == ["0.0", "1.0"]


def test_default_set_is_conv_and_linear():
    assert list(select(_model())) == ["0.0", "1.0", "3"]


def test_ignore_wins_over_targets():
    chosen = select(_model(), targets=["type:Conv1d", "3"], ignore=["re:1\\..*"])
    assert list(chosen) == ["0.0", "3"]
    assert isinstance(chosen["3"], nn.Linear)


@pytest.mark.parametrize("targets,ignore,bad", [(["conv1"], [], "conv1"), ([], ["type:Conv2d"], "type:Conv2d"),
                                                (["re:layer.*"], [], "re:layer.*")])
def test_selector_matching_nothing_is_an_error(targets, ignore, bad):
    with pytest.raises(EdgetierError) as info:
        select(_model(), targets, ignore, where="stages[0].with.targets")
    message = str(info.value)
    assert repr(bad) in message and "stages[0].with.targets" in message and "Fix:" in message


def test_invalid_regex_is_an_error():
    with pytest.raises(EdgetierError, match="not a valid regular expression"):
        select(_model(), ["re:("])
