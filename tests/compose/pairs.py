"""The tiny stage of every kind that the composition matrix chains, and the recipe of one ordered pair.

Every stage trains at most one epoch on the 1,257 training digits with a resnet2d of width 4, so one
pair runs in seconds; the settings only need to exercise each technique, not to reach any accuracy.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import TINY

NAS = {"strategy": "random", "trials": 2, "batch": 2, "finalists": 1, "final_epochs": 1,
       "space": {"family": "resnet2d", "width": 8, "depth": [1], "width_mult": [0.5, 1.0], "kernel": [3],
                 "expansion": [1.0]},
       "budget": {"max_macs": 10_000_000},
       "proxy": {"epochs": 1, "samples": 128, "lr": 0.01, "batch_size": 64}}

# kind -> (with, train epochs)
STAGES: dict[str, tuple[dict[str, Any], int]] = {
    "finetune": ({}, 1),
    "distill": ({"temperature": 4, "alpha": 0.5}, 1),
    "feature_distill": ({"loss": "mse"}, 1),  # the prediction (logits) only: layer names change under early_exit
    "early_exit": ({"after": ["layer1"]}, 1),
    "nas": (NAS, 0),
    "structured_prune": ({"ratio": 0.5}, 1),
    "unstructured_prune": ({"ratio": 0.5}, 1),
    "snip": ({"ratio": 0.5}, 1),
    "lottery_ticket": ({"rounds": 1, "ratio": 0.3, "epochs": 1}, 0),
    "cluster": ({"clusters": 8}, 1),
    "hash_share": ({"compression": 0.25}, 1),  # no selectors: after early_exit the names are the wrapper's
    "qat": ({"weight_bits": 4}, 1),
    "mixed_precision": ({"bits": [2, 4, 8], "budget": {"avg_bits": 4}, "trials": 0, "trial_epochs": 0,
                         "pareto_points": 2, "sensitivity_samples": 128, "calib_samples": 64}, 1),
    "ptq_int8": ({"calib_samples": 64}, 0),
    "partition": ({"tiers": ["edge", "cloud"]}, 0),
}


def stage(kind: str, name: str) -> dict[str, Any]:
    options, epochs = STAGES[kind]
    entry: dict[str, Any] = {"name": name, "kind": kind, "with": copy.deepcopy(options)}
    if epochs:
        entry["train"] = {"epochs": epochs}
    return entry


def pair_recipe(first: str, second: str, *, formats: tuple[str, ...] = ("onnx",)) -> dict[str, Any]:
    """A tiny recipe whose one variant runs `first` then `second` (on an onnxruntime target) and exports `formats`."""
    recipe = copy.deepcopy(TINY)
    recipe["name"] = f"{first}-then-{second}"
    recipe["model"] = {"zoo": "resnet2d", "width": 4, "train": {"epochs": 1, "lr": 0.01}}
    recipe["stages"] = [stage(first, "a"), stage(second, "b")]
    recipe["variants"] = {"edge": {"target": "jetson_orin_nano", "export": list(formats)}}
    return recipe
