"""`hash_share`: the hashes are the documented universal hash, buckets initialize to the
least-squares fit of the dense layer, gradients reach the buckets, per-layer compression works,
bad compressions are refused, and `restore` rebuilds the layers."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.errors import EdgetierError
from compress.share.hashing import PRIME, HashedLayer, HashShareConfig, hash_layer

X = (torch.zeros(1, 2, 12),)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 5))


def reference_hash(layer: HashedLayer) -> tuple[np.ndarray, np.ndarray]:
    """The module doc's formula in plain Python integers: x = a i + b, z = x^2 mod p."""
    b, _limit, a, _ones, p, k, half = (int(v) for v in layer.hash_params)
    assert p == PRIME and half == p // 2
    z = np.array([((a * i + b) ** 2) % p for i in range(int(np.prod(layer.weight_shape)))])
    return z % k, np.where(z > half, -1.0, 1.0)


def test_hashes_follow_the_documented_formula():
    layer = HashedLayer(nn.Linear(50, 40), buckets=250, seed=7)
    bucket, sign = layer.hashes()
    want_bucket, want_sign = reference_hash(layer)
    np.testing.assert_array_equal(bucket.numpy(), want_bucket)
    np.testing.assert_array_equal(sign.numpy(), want_sign)


def offset_collisions(bucket: np.ndarray) -> np.ndarray:
    """For every offset d, how many pairs (i, i + d) share a bucket."""
    order = np.argsort(bucket, kind="stable")
    sorted_buckets = bucket[order]
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    diffs = []
    for members in np.split(order, starts[1:]):
        d = np.abs(members[:, None] - members[None, :])
        diffs.append(d[np.triu_indices(len(members), 1)])
    return np.bincount(np.concatenate(diffs), minlength=len(bucket))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hash_spreads_weights_like_a_random_function(seed):
    n, k = 20_000, 2_500
    layer = HashedLayer(nn.Linear(100, 200), buckets=k, seed=seed)
    bucket, sign = (t.numpy() for t in layer.hashes())
    # Occupancy: about Poisson(8) per bucket; the chi-square statistic has mean k - 1 and sd
    # sqrt(2 (k - 1)) ~ 71 for a random function. A linear hash lands far *below* it (too even).
    chi2 = float((((np.bincount(bucket, minlength=k) - n / k) ** 2) / (n / k)).sum())
    assert abs(chi2 - (k - 1)) < 5 * 71
    assert abs(float((sign < 0).mean()) - 0.5) < 0.02  # binomial sd 0.0035
    # No offset d for which weight i and weight i + d share a bucket for a large share of i: that
    # would tie whole rows or kernels together. A random function's worst offset has ~20 such
    # pairs (of ~20,000), this hash's worst seen is ~110; the linear hash below has ~11,700.
    assert offset_collisions(bucket).max() < 0.02 * n


def test_the_offset_check_catches_a_linear_hash():
    i = np.arange(20_000, dtype=np.int64)
    linear = ((1_234_567_891 * i + 7) % PRIME) % 2_500
    assert offset_collisions(linear).max() > 0.02 * len(i)


def test_layers_get_independent_seeds():
    model, _ = compress.apply(small_model(), HashShareConfig(compression=0.5), example_inputs=X)
    assert not torch.equal(model[0].hash_params[:3], model[3].hash_params[:3])
    again, _ = compress.apply(small_model(), HashShareConfig(compression=0.5), example_inputs=X)
    assert torch.equal(again[0].hash_params, model[0].hash_params)  # same seed, same hashes


def test_dense_init_is_the_mean_of_sign_corrected_weights_per_bucket():
    dense = nn.Linear(30, 20)
    shared, info = hash_layer(dense, compression=0.1, init="dense", seed=3)
    bucket, sign = reference_hash(shared)
    w = dense.weight.detach().double().numpy().reshape(-1)
    for k in range(shared.buckets.numel()):
        members = bucket == k
        want = (sign[members] * w[members]).mean() if members.any() else 0.0
        assert float(shared.buckets[k].detach()) == pytest.approx(want, abs=1e-6)
    assert info["buckets"] == 60 and info["compression"] == pytest.approx(0.1)
    torch.testing.assert_close(shared.bias, dense.bias)


def test_scratch_init_uses_the_default_layer_init_range():
    shared, _ = hash_layer(nn.Conv1d(4, 16, 5), compression=0.25, init="scratch", seed=0)
    bound = 1 / np.sqrt(4 * 5)
    spread = float(shared.buckets.detach().abs().max())
    assert 0.9 * bound < spread <= bound  # the whole range, not collapsed  # spread over the whole range, not collapsed
    assert float(shared.bias.detach().abs().max()) <= bound


def test_bucket_gradient_is_the_signed_sum_of_its_virtual_weights_gradients():
    model, _ = compress.apply(small_model(), HashShareConfig(compression=0.25), example_inputs=X)
    layer = model[3]
    x = torch.randn(4, 96)
    F.linear(x, layer.weight, layer.bias).square().sum().backward()
    w = layer.weight.detach().clone().requires_grad_(True)
    F.linear(x, w, layer.bias.detach()).square().sum().backward()
    bucket, sign = layer.hashes()
    expected = torch.zeros(layer.buckets.numel()).index_add_(0, bucket, sign * w.grad.reshape(-1))
    torch.testing.assert_close(layer.buckets.grad, expected, rtol=1e-5, atol=1e-6)


def test_hashed_model_trains():
    model, _ = compress.apply(small_model(), HashShareConfig(compression=0.25, init="scratch"), example_inputs=X)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 2, 12), torch.randint(0, 5, (64,))
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first  # 64 random labels: a trainable model memorizes them


def test_per_layer_compression_through_selectors_later_entries_win():
    config = HashShareConfig(compression=0.5, layers={"type:Linear": 0.25, "re:3": 0.125})
    model, report = compress.apply(small_model(), config, example_inputs=X)
    assert report["layers"]["0"]["buckets"] == 24   # 48 weights * 0.5
    assert report["layers"]["3"]["buckets"] == 60   # 480 weights * 0.125: the later entry
    assert report["real_weights"] == 84 and report["virtual_weights"] == 528


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_compression_outside_0_1_is_refused(bad):
    with pytest.raises(ValidationError, match=r"must lie in \(0, 1\]"):
        HashShareConfig(compression=bad)
    with pytest.raises(ValidationError, match=r"layers\['re:fc'\].*must lie in \(0, 1\]"):
        HashShareConfig(layers={"re:fc": bad})


def test_layers_selector_that_matches_no_hashed_layer_is_an_error():
    with pytest.raises(EdgetierError, match="matches none of the layers being hashed"):
        HashShareConfig(targets=("0",), layers={"3": 0.5}).check_model(small_model(), None)
    with pytest.raises(EdgetierError, match="selector 'fc9' matches no module"):
        HashShareConfig(layers={"fc9": 0.5}).check_model(small_model(), None)


def test_restore_rebuilds_the_structure_for_the_saved_weights(tmp_path):
    from compress.core.context import Context
    from compress.share.hashing import HashShare

    config = HashShareConfig(compression=0.3, layers={"3": 0.1})
    result = compress.apply(small_model(), config, example_inputs=X, seed=5)
    with torch.no_grad():
        result.model[3].buckets.mul_(1.1)  # as training would
    torch.save({"state": result.state, "weights": result.model.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh = HashShare(config).restore(small_model(), saved["state"], Context(example_inputs=X)).model
    fresh.load_state_dict(saved["weights"])
    x = torch.randn(3, 2, 12)
    torch.testing.assert_close(fresh(x), result.model(x), rtol=0, atol=0)
    assert copy.deepcopy(fresh)[3].buckets.numel() == 48
