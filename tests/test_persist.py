"""compress.save / compress.load round-trip compressed models without pickles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compress
from compress import datasets
from compress.core.errors import EdgetierError
from compress.models import build
from compress.prune.structured import StructuredPruneConfig
from compress.quant.qat import QATConfig
from compress.share.clustering import ClusterConfig


def _fresh():
    torch.manual_seed(0)
    return build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)


@pytest.mark.parametrize("configs", [
    [StructuredPruneConfig(ratio=0.5)],
    [QATConfig(weight_bits=4)],
    [StructuredPruneConfig(ratio=0.5), ClusterConfig(clusters=8)],
], ids=["pruned", "qat4", "pruned+shared"])
def test_round_trip_gives_the_same_outputs(tmp_path, configs):
    data = datasets.load("digits")
    model = _fresh()
    for config in configs:
        model, _ = compress.apply(model, config, data=data)
    path = compress.save(model, tmp_path / "m.pt")
    back = compress.load(path, _fresh())
    x = torch.from_numpy(data.test.x[:16])
    with torch.no_grad():
        # same modules, same weights: bit-identical outputs
        np.testing.assert_array_equal(back.eval()(x).numpy(), model.eval()(x).numpy())
    assert compress.save(back, tmp_path / "again.pt").is_file()  # the restored model saves again


def test_a_pickle_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole module: needs unpickling code
    with pytest.raises(EdgetierError, match="not a file written by compress.save"):
        compress.load(tmp_path / "pickled.pt", torch.nn.Linear(2, 2))
