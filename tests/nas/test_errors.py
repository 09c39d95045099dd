"""Bad input to the nas stage: one clear error each (empty space, unknown strategy, a budget no
candidate meets, Ray requested but not reachable)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compress.core.errors import EdgetierError
from compress.nas.config import NASConfig
from compress.targets import load_target

from .conftest import tiny_config


def test_empty_search_space_says_which_choice_is_empty() -> None:
    with pytest.raises(ValidationError, match="the search space is empty: `kernel` has no choices"):
        NASConfig.from_dict(tiny_config(space={"kernel": []}))


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ValidationError, match="'random', 'evolution' or 'spos'"):
        NASConfig.from_dict(tiny_config(strategy="grid"))


def test_unreachable_budget_fails_before_training(cloud) -> None:
    config = NASConfig.from_dict(tiny_config(budget={"max_latency_ms": 0.2001}))
    with pytest.raises(EdgetierError, match=r"the smallest \(resnet2d s8 .*\) costs .* ms estimated"):
        config.check_model(cloud, load_target("rpi4"))  # rpi4's fixed overhead alone is 0.2 ms


def test_precision_the_target_lacks_is_refused_at_load() -> None:
    config = NASConfig.from_dict(tiny_config(budget={"precision": "fp32"}))
    with pytest.raises(EdgetierError, match="not a precision target 'coral_edgetpu' runs"):
        config.check_target(load_target("coral_edgetpu"))  # an int8-only accelerator


def test_ray_not_reachable_is_a_clear_error(cloud, digits) -> None:
    import compress

    config = NASConfig.from_dict(tiny_config(executor="ray", address="127.0.0.1:9"))  # discard port: no Ray there
    with pytest.raises(EdgetierError, match="Ray is not reachable at 127.0.0.1:9"):
        compress.apply(cloud, config, target="rpi4", data=digits, seed=0)


def test_unknown_cli_executor(tmp_path) -> None:
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml"), "--executor", "dask"])
    assert result.exit_code != 0 and "unknown executor 'dask'" in str(result.exception)
