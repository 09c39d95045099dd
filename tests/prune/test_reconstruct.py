"""Least-squares repair after structured pruning (`compress.prune.reconstruct`, `reconstruct:` of
structured_prune): the fit is the least-squares solution, padding stays out of it, and a pruned
transformer's narrowed layers come out closer to the unpruned model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.prune.reconstruct import refit_linears
from compress.prune.structured import StructuredPrune, StructuredPruneConfig
from tests.hf.tiny import tiny_bert, token_batch, token_dataset


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    pruned = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 4))
    with torch.no_grad():
        pruned[0].weight.copy_(reference[0].weight[:3])
        pruned[0].bias.copy_(reference[0].bias[:3])
        pruned[2].weight.copy_(reference[2].weight[:, :3])
        pruned[2].bias.copy_(reference[2].bias)
    return reference, pruned


def test_the_refit_is_numpys_least_squares_solution():
    reference, pruned = _pair()
    x = torch.randn(200, 8)
    refit_linears(pruned, reference, ["2"], [(x[:100],), (x[100:],)], ridge=0.0)
    with torch.no_grad():
        features = torch.cat([pruned[1](pruned[0](x)), torch.ones(200, 1)], 1).double().numpy()
        target = reference(x).double().numpy()
    solution = np.linalg.lstsq(features, target, rcond=None)[0]
    # float64 normal equations vs numpy's SVD solve, stored as float32: agree to float32 rounding
    np.testing.assert_allclose(pruned[2].weight.detach().numpy(), solution[:3].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pruned[2].bias.detach().numpy(), solution[3], rtol=1e-4, atol=1e-5)


def test_masked_positions_do_not_enter_the_fit():
    """Rows of a [batch, sequence, width] activation where the mask is 0 are padding: the fit on a
    padded batch equals the fit on its real tokens alone."""
    class Tokens(nn.Module):  # a per-token MLP on [batch, sequence, 8]
        def __init__(self, body: nn.Sequential) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    reference, pruned = _pair()
    reference, padded, real = Tokens(reference), Tokens(pruned), Tokens(_pair()[1])
    x = torch.randn(4, 10, 8)
    mask = (torch.arange(10)[None] < torch.tensor([[3], [10], [6], [1]])).long()
    x_padded = torch.where(mask[..., None].bool(), x, 100 * torch.randn(4, 10, 8))  # garbage in the padding
    refit_linears(padded, reference, ["body.2"], [(x_padded,)], masks=[mask])
    refit_linears(real, reference, ["body.2"], [(x[mask.bool()][None],)])
    torch.testing.assert_close(padded.body[2].weight, real.body[2].weight, rtol=1e-4, atol=1e-5)



def test_a_pruned_bert_gets_its_narrowed_layers_refit_and_reports_the_errors():
    model = tiny_bert(hidden=64, heads=4, layers=2)
    batch = token_batch()
    ctx = Context(example_inputs=(batch["input_ids"], batch["attention_mask"]), data=token_dataset())
    result = StructuredPrune(StructuredPruneConfig(heads=0.25, mlp=0.5, reconstruct=48)).apply(model, ctx)
    errors = result.report["reconstruct"]["relative_error"]
    # exactly the layers that read pruned heads / channels: attention output projection and MLP output
    assert sorted(errors) == sorted(f"encoder.layer.{i}.{p}.dense" for i in range(2) for p in ("attention.output",
                                                                                                 "output"))
    for before, after in errors.values():
        assert after < before  # least squares on these inputs can only lower the error of the pruned weights


def test_reconstruct_needs_a_transformer_pruned_per_kind():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    cfg = StructuredPruneConfig(ratio=0.5, reconstruct=16)
    with pytest.raises(EdgetierError, match="reconstruct"):
        StructuredPrune(cfg).apply(model, Context(example_inputs=(torch.zeros(1, 1, 8, 8),)))
