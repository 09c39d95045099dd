"""`cluster`: codebook + fixed codes per layer or channel, centroid gradients summed per cluster,
zeros kept with `preserve_sparsity`, clear errors, and `restore` for checkpoints."""

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.errors import EdgetierError
from compress.share.clustering import ClusterConfig, ClusteredLayer
from compress.share.hashing import HashShareConfig
from compress.share.packing import packed_size, unpack_codes

X = (torch.zeros(1, 2, 12),)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 5))


def codes_of(layer: ClusteredLayer) -> torch.Tensor:
    return unpack_codes(layer.codes, layer.groups * layer.group_size, layer.bits).view(layer.groups, -1)


def test_layer_granularity_shares_k_values_and_stores_packed_codes():
    model = small_model()
    dense = copy.deepcopy(model)
    model, report = compress.apply(model, ClusterConfig(clusters=4), example_inputs=X)
    for name in ("0", "3"):
        layer = model.get_submodule(name)
        assert isinstance(layer, ClusteredLayer)
        w = layer.weight
        assert len(torch.unique(w)) <= 4
        assert layer.codes.dtype == torch.uint8 and layer.codes.numel() == packed_size(w.numel(), 2)  # 2 bits
        # every weight is its centroid: the rebuilt weight is codebook[code]
        torch.testing.assert_close(w.reshape(-1), layer.codebook[0][codes_of(layer)[0]], rtol=0, atol=0)
        original = dense.get_submodule(name).weight
        error = float((w - original).detach().norm() / original.detach().norm())
        assert report["layers"][name]["relative_error"] == pytest.approx(error, rel=1e-5)
        assert error < 0.35  # 4 centroids of a uniform init: quantization noise well below the weights
    torch.testing.assert_close(model[0].bias, dense[0].bias)  # biases are kept, not clustered


def test_channel_granularity_has_a_codebook_per_output_channel():
    model, report = compress.apply(small_model(), ClusterConfig(clusters=3, granularity="channel", init="density"),
                                   example_inputs=X)
    layer = model[0]
    assert layer.codebook.shape == (8, 3)
    for row in layer.weight.reshape(8, -1):
        assert len(torch.unique(row)) <= 3
    assert report["layers"]["0"]["bits"] == 2


def test_centroid_gradient_is_the_sum_of_its_members_gradients():
    model, _ = compress.apply(small_model(), ClusterConfig(clusters=5, init="kmeans++"), example_inputs=X)
    layer = model[3]
    x = torch.randn(4, 96)
    F.linear(x, layer.weight, layer.bias).square().sum().backward()
    # reference: the same computation on a plain dense weight, its gradient summed per code
    w = layer.weight.detach().clone().requires_grad_(True)
    F.linear(x, w, layer.bias.detach()).square().sum().backward()
    codes = codes_of(layer)[0]
    expected = torch.zeros(5).index_add_(0, codes, w.grad.reshape(-1))
    torch.testing.assert_close(layer.codebook.grad[0], expected, rtol=1e-5, atol=1e-6)


def test_training_moves_centroids_but_never_the_assignments():
    model, _ = compress.apply(small_model(), ClusterConfig(clusters=8), example_inputs=X)
    codes_before = model[0].codes.clone()
    book_before = model[0].codebook.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 2, 12), torch.randint(0, 5, (32,))
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert torch.equal(model[0].codes, codes_before)
    assert not torch.allclose(model[0].codebook, book_before)
    assert len(torch.unique(model[0].weight)) <= 8


def test_preserve_sparsity_keeps_pruned_zeros_zero_through_training():
    model = small_model()
    with torch.no_grad():  # magnitude-prune 80 % of each weight, as an unstructured pruning stage would
        for layer in (model[0], model[3]):
            w = layer.weight
            w[w.abs() < w.abs().flatten().kthvalue(int(0.8 * w.numel())).values] = 0.0
    zeros = {n: model.get_submodule(n).weight == 0 for n in ("0", "3")}
    model, report = compress.apply(model, ClusterConfig(clusters=4, preserve_sparsity=True), example_inputs=X)
    assert model[0].codebook.shape == (1, 3)  # code 0 is the fixed zero, 3 trainable centroids
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(32, 2, 12), torch.randint(0, 5, (32,))
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, mask in zeros.items():
        w = model.get_submodule(name).weight
        assert torch.equal(w == 0, mask)  # zeros exactly where they were, and nowhere else
        assert report["layers"][name]["zeros"] == int(mask.sum())


def test_fewer_nonzero_weights_than_centroids_is_fine():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
    model, report = compress.apply(nn.Sequential(layer), ClusterConfig(clusters=8, preserve_sparsity=True),
                                   example_inputs=(torch.zeros(1, 4),))
    torch.testing.assert_close(model[0].weight, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
    assert report["layers"]["0"]["distinct_values"] == 3


@pytest.mark.parametrize("clusters", [1, 0, 257])
def test_cluster_count_outside_2_to_256_is_refused(clusters):
    with pytest.raises(ValidationError, match="clusters"):
        ClusterConfig(clusters=clusters)


def test_more_clusters_than_weights_names_the_layer():
    with pytest.raises(EdgetierError, match=r"more than the weights.*0 \(6\)") as info:
        compress.apply(small_model(), ClusterConfig(clusters=8, granularity="channel"), example_inputs=X)
    assert "ignore" in info.value.fix


def test_clustering_a_hashed_layer_is_an_error():
    model, _ = compress.apply(small_model(), HashShareConfig(compression=0.5, targets=("3",)), example_inputs=X)
    with pytest.raises(EdgetierError, match=r"already shared: 3 \(hash_share\)"):
        compress.apply(model, ClusterConfig(clusters=4), example_inputs=X)
    model, _ = compress.apply(model, ClusterConfig(clusters=4, ignore=("3",)), example_inputs=X)  # the fix works
    assert isinstance(model[0], ClusteredLayer)


def test_hashing_a_clustered_layer_is_an_error():
    model, _ = compress.apply(small_model(), ClusterConfig(clusters=4), example_inputs=X)
    with pytest.raises(EdgetierError, match=r"already shared: .*\(cluster\)"):
        compress.apply(model, HashShareConfig(targets=("0",)), example_inputs=X)


def test_non_conv_linear_layers_are_refused_by_name_and_skipped_by_pattern():
    with pytest.raises(EdgetierError, match=r"Conv1d, Conv2d and Linear layers only, not 1 \(ReLU\)"):
        compress.apply(small_model(), ClusterConfig(targets=("1",)), example_inputs=X)
    with pytest.raises(EdgetierError, match="leave no Conv1d, Conv2d or Linear layer"):
        compress.apply(small_model(), ClusterConfig(targets=("type:ReLU",)), example_inputs=X)
    model, report = compress.apply(small_model(), ClusterConfig(targets=("re:[0-2]",)), example_inputs=X)
    assert list(report["layers"]) == ["0"]  # the pattern's ReLU and Flatten are not weight layers


def test_restore_rebuilds_the_structure_for_the_saved_weights(tmp_path):
    from compress.core.context import Context
    from compress.share.clustering import Cluster

    config = ClusterConfig(clusters=6, granularity="channel", preserve_sparsity=True, ignore=("3",))
    result = compress.apply(small_model(), config, example_inputs=X)
    with torch.no_grad():
        result.model[0].codebook.add_(0.01)  # as fine-tuning would
    torch.save({"state": result.state, "weights": result.model.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # the pipeline's loader
    fresh = Cluster(config).restore(small_model(), saved["state"], Context(example_inputs=X)).model
    fresh.load_state_dict(saved["weights"])
    x = torch.randn(3, 2, 12)
    torch.testing.assert_close(fresh(x), result.model(x), rtol=0, atol=0)
