"""The zoo: structure, shapes, deterministic init and inputs, errors, torch-pruning compatibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.models import ZOO, build, build_from_spec, check_spec

# Every zoo model with the inputs it is meant for, plus other channel counts and sizes.
CASES = [
    ("resnet2d", (1, 8, 8)),
    ("resnet2d", (3, 12, 10)),
    ("resnet1d", (1, 40)),
    ("resnet1d", (2, 33)),
    ("transformer", (1, 40)),
    ("transformer", (1, 8, 8)),
    ("transformer", (3, 6, 10)),
]


def params(cases: list[tuple[str, tuple[int, ...]]]) -> list[object]:
    return [pytest.param(zoo, shape, id=f"{zoo}-{'x'.join(map(str, shape))}") for zoo, shape in cases]


def make(zoo: str, shape: tuple[int, ...], num_classes: int = 7, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return build(zoo, input_shape=shape, num_classes=num_classes, **kwargs)


def test_zoo_is_exactly_the_three_reference_models() -> None:
    assert sorted(ZOO) == ["resnet1d", "resnet2d", "transformer"]


@pytest.mark.parametrize(("zoo", "shape"), params(CASES))
def test_forward_shape_stages_and_example_inputs(zoo: str, shape: tuple[int, ...]) -> None:
    model = make(zoo, shape).eval()
    assert [name for name, _ in model.named_children()] == ["stem", "layer1", "layer2", "layer3", "head"]
    fc = model.get_submodule("head.fc")
    assert isinstance(fc, nn.Linear) and fc.out_features == 7
    (x,) = model.example_inputs(batch=3)
    assert x.shape == (3, *shape) and x.dtype == torch.float32
    assert model(x).shape == (3, 7)
    # The chain of stages is the whole forward: early exits and segments rely on that.
    staged = x
    for stage in (model.stem, model.layer1, model.layer2, model.layer3, model.head):
        staged = stage(staged)
    assert torch.equal(staged, model(x))


def test_example_inputs_are_fixed_and_leave_the_global_rng_alone() -> None:
    model = make("resnet1d", (1, 40))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = model.example_inputs(4)[0], model.example_inputs(4)[0]
    assert torch.equal(first, second) and first.std() > 0.5  # real values, not zeros
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model.example_inputs(2)[0], first[:2])


@pytest.mark.parametrize("zoo", sorted(ZOO))
def test_init_is_fixed_by_torch_manual_seed(zoo: str) -> None:
    shape = (1, 8, 8) if zoo == "resnet2d" else (1, 40)
    a, b = make(zoo, shape).state_dict(), make(zoo, shape).state_dict()
    torch.manual_seed(1)
    c = build(zoo, input_shape=shape, num_classes=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_parameters_change_the_architecture() -> None:
    assert [len(make("resnet2d", (1, 8, 8), blocks=[2, 1, 3]).get_submodule(f"layer{i}")) for i in (1, 2, 3)] \
        == [2, 1, 3]
    assert make("resnet1d", (1, 40), width=16, kernel_size=3).stem.conv.weight.shape == (16, 1, 3)
    model = make("transformer", (1, 40), dim=32, heads=2, mlp_ratio=3, patch=5)
    assert model.stem.pos.shape == (1, 8, 32)
    assert model.layer1[0].attn.num_heads == 2 and model.layer1[0].mlp.fc1.out_features == 96
    # The documented default patches: 4 for signals, 2 for images.
    assert make("transformer", (1, 40)).stem.pos.shape[1] == 10
    assert make("transformer", (1, 8, 8)).stem.pos.shape[1] == 16


@pytest.mark.parametrize(("zoo", "kwargs", "fragments"), [
    ("resnet3d", {}, ["unknown zoo model 'resnet3d'", "resnet1d, resnet2d, transformer"]),
    ("resnet1d", {"depth": 18}, ["unknown parameter(s) depth", "width=64", "kernel_size=5"]),
    ("transformer", {"num_heads": 2}, ["num_heads", "heads=4", "mlp_ratio=2", "patch=None"]),
    ("resnet1d", {"width": 0}, ["width is 0", "an integer from 1 to"]),
    ("resnet1d", {"kernel_size": 4}, ["kernel_size is 4", "odd"]),
    ("resnet1d", {"blocks": (1, 1)}, ["blocks is (1, 1)", "three integers"]),
    ("transformer", {"dim": 30}, ["dim 30 is not divisible by heads 4"]),
    ("transformer", {"patch": 3}, ["patch 3 does not divide", "[1, 2, 4, 5, 8, 10, 20, 40]"]),
    ("transformer", {"mlp_ratio": "2"}, ["mlp_ratio is '2'"]),
])
def test_bad_names_and_parameters_are_clear_errors(zoo: str, kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(EdgetierError) as caught:
        build(zoo, input_shape=(1, 40), num_classes=10, **kwargs)
    assert "Fix:" in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(("zoo", "shape", "expected"), [
    ("resnet2d", (1, 40), "use resnet1d"),
    ("resnet1d", (1, 8, 8), "use resnet2d"),
    ("transformer", (40,), "(channels, length) or (channels, height, width)"),
    ("resnet1d", (1, 0), "input_shape is (1, 0)"),
])
def test_input_shape_must_match_the_model(zoo: str, shape: tuple[int, ...], expected: str) -> None:
    with pytest.raises(EdgetierError) as caught:
        build(zoo, input_shape=shape, num_classes=10)
    assert expected in str(caught.value)


def test_spec_helpers_for_recipes() -> None:
    check_spec(zoo="resnet1d", options={"width": 8})
    with pytest.raises(EdgetierError, match="exactly one of zoo or factory"):
        check_spec(zoo="resnet1d", factory="compress.models:build")
    with pytest.raises(EdgetierError, match="takes no parameter"):
        check_spec(factory="compress.models.resnet:resnet1d", options={"depth": 3})
    model = build_from_spec(factory="compress.models.resnet:resnet1d", options={"width": 8},
                            input_shape=(1, 40), num_classes=4)
    assert model(*model.example_inputs()).shape == (1, 4)
    with pytest.raises(EdgetierError, match="not a torch.nn.Module"):
        build_from_spec(factory="compress.datasets.digits:digits_arrays", input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize(("zoo", "shape"), params([c for c in CASES if c[1][0] == 1]))
def test_torch_pruning_halves_channels_and_the_model_still_runs(zoo: str, shape: tuple[int, ...]) -> None:
    import torch_pruning as tp
    model = make(zoo, shape).eval()
    example = model.example_inputs(2)
    before = sum(p.numel() for p in model.parameters())
    extra: dict[str, object] = {}
    if zoo == "transformer":
        blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
        extra = {"num_heads": {b.attn.qkv: b.attn.num_heads for b in blocks},
                 "unwrapped_parameters": [(model.stem.pos, 2)]}  # the token dim of (1, tokens, dim)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.head.fc], **extra)
    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    # Halving every hidden width leaves about a quarter of the weights; 0.35 allows for biases,
    # norms and the unpruned classifier.
    assert after < 0.35 * before
    assert model(*example).shape == (2, 7)
