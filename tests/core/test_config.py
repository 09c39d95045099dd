"""Technique configs: frozen, strict, and round-trip through dict and YAML for every registered kind."""

import pytest
import yaml
from pydantic import ValidationError

from compress.registry import REGISTRY

# Kinds whose configs have required fields: the smallest valid `with` for each.
REQUIRED = {"early_exit": {"after": ["layer1"]}, "snip": {"ratio": 0.5}, "unstructured_prune": {"ratio": 0.5},
            "structured_prune": {"ratio": 0.5}}


def _example(kind):
    return REGISTRY[kind].config_type.model_validate({"kind": kind, **REQUIRED.get(kind, {})})


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_config_round_trips_through_yaml(kind):
    cls = REGISTRY[kind].config_type
    config = _example(kind)
    text = yaml.safe_dump(config.to_dict())
    again = cls.from_dict(yaml.safe_load(text))
    assert again == config and again.kind == kind


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_config_is_frozen_and_strict(kind):
    cls = REGISTRY[kind].config_type
    config = _example(kind)
    with pytest.raises(ValidationError):
        config.kind = "other"
    with pytest.raises(ValidationError, match="Extra inputs"):
        cls.from_dict({"kind": kind, **REQUIRED.get(kind, {}), "no_such_key": 1})


def test_ptq_refuses_layer_selectors():
    from compress.quant.ptq import PTQInt8Config

    with pytest.raises(ValidationError, match="whole graph"):
        PTQInt8Config(targets=("layer1",))
