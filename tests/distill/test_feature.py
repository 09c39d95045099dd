"""feature_distill: a pruned BERT recovers its teacher's pooled embedding without labels; layer maps
between different widths are trained outside the model; CNN feature KD on a zoo model; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.core.adapter import ModelAdapter
from compress.core.errors import EdgetierError
from compress.core.train import TrainSpec, fit
from compress.datasets import load
from compress.distill.feature import FeatureDistillConfig, feature_loss
from compress.models import build
from compress.prune.structured import StructuredPruneConfig
from tests.hf.tiny import tiny_bert, token_batch


def _cosine(adapter: ModelAdapter, student, teacher, batches) -> float:
    with torch.no_grad():
        return float(torch.cat([F.cosine_similarity(adapter.call(student, b), adapter.call(teacher, b))
                                for b in batches]).mean())


def test_feature_loss_matches_its_definition():
    s, t = torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 4)
    expected = (1 - F.cosine_similarity(s[:, :2], t[:, :2], dim=-1)).mean()
    torch.testing.assert_close(feature_loss(s, t, "cosine", mask=mask), expected)
    torch.testing.assert_close(feature_loss(s, t, "mse", dim=1), (s - t).pow(2).mean())


def _teacher_bert():
    """A tiny BERT whose blocks matter: BERT's init (std 0.02) leaves a random model's embedding
    almost all residual stream, so pruning it would change nothing measurable."""
    teacher = tiny_bert(hidden=64, heads=4, vocab=64)
    with torch.no_grad():
        for module in teacher.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 1.5 / module.in_features ** 0.5)
    return teacher


def test_pruned_bert_recovers_the_teachers_embedding_without_labels():
    teacher = _teacher_bert()
    batch = token_batch(8, 12, vocab=64, seed=0)
    example = (batch["input_ids"][:2], batch["attention_mask"][:2])
    student = compress.apply(copy.deepcopy(teacher), StructuredPruneConfig(heads=0.5, mlp=0.5),
                             example_inputs=example).model
    result = compress.apply(student, FeatureDistillConfig(loss="cosine", layers=[{"student": "encoder.layer.0"}]),
                            teacher=teacher, example_inputs=example)
    adapter = ModelAdapter.from_model(teacher, batch)  # mean-pooled last_hidden_state
    held_out = [token_batch(16, 12, vocab=64, seed=s) for s in (100, 101)]
    before = _cosine(adapter, student, teacher, held_out)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    student.train()
    for step in range(30):  # the user's own loop: no labels, only the hook's loss
        b = token_batch(16, 12, vocab=64, seed=step + 1)
        loss = result.hooks.loss(student, b, student(**b), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        result.hooks.after_step(student)
    student.eval()
    after = _cosine(adapter, student, teacher, held_out)
    # measured 0.47 -> 0.93 on this seed: a margin of 0.1 is far above any float-order effect
    assert after > before + 0.1, (before, after)


def test_layer_maps_between_widths_train_outside_the_model():
    torch.manual_seed(0)
    teacher = build("resnet1d", input_shape=(1, 40), num_classes=4, width=16).eval()
    student = build("resnet1d", input_shape=(1, 40), num_classes=4, width=8)
    keys = set(student.state_dict())
    params = sum(p.numel() for p in student.parameters())
    config = FeatureDistillConfig(loss="mse", layers=[{"student": "layer1"}, {"student": "layer2"}])
    x = torch.randn(64, 1, 40)
    technique = compress.registry.build(config)
    result = technique.apply(student, compress.core.context.Context(example_inputs=(x[:1],), teacher=teacher))
    maps = technique.projections
    assert [list(m.linear.weight.shape) for m in maps.values()] == [[16, 8], [16, 8]]  # channels, dim 1
    before = [p.detach().clone() for p in maps.parameters()]
    y = torch.randint(0, 4, (64,))
    fit(student, (x.numpy(), y.numpy()), TrainSpec(epochs=2, lr=1e-2, batch_size=16), hooks=result.hooks)
    assert all(not torch.equal(a, b) for a, b in zip(before, maps.parameters(), strict=True))  # trained
    assert set(student.state_dict()) == keys and sum(p.numel() for p in student.parameters()) == params


def test_cnn_feature_kd_on_a_zoo_model_pulls_the_layer_toward_the_teachers():
    digits = load("digits", seed=0)
    torch.manual_seed(0)
    teacher = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
    spec = TrainSpec(epochs=3, lr=1e-2, batch_size=64)
    fit(teacher, digits.train, spec, seed=0)
    teacher.eval()
    x = torch.from_numpy(digits.test.x)

    def distance(student) -> float:
        out = {}
        handles = [m.layer2.register_forward_hook(lambda _m, _i, o, k=k: out.update({k: o}))
                   for k, m in (("s", student), ("t", teacher))]
        with torch.no_grad():
            student.eval()(x), teacher(x)
        for h in handles:
            h.remove()
        return float((out["s"] - out["t"]).pow(2).mean())

    distances = []
    for distilled in (False, True):  # the same init and batches, with and without the layer term
        torch.manual_seed(1)
        student = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
        hooks = compress.apply(student, FeatureDistillConfig(loss="mse", output_weight=0.0,
                                                             layers=[{"student": "layer2"}]),
                               teacher=teacher, example_inputs=(x[:1],)).hooks if distilled else None
        fit(student, digits.train, spec, hooks=hooks, seed=0)
        distances.append(distance(student))
    # two inits learn unrelated features; the hook pulls layer2 onto the teacher's (measured 1.78 without, 0.33 with);
    # half is a wide margin
    assert distances[1] < 0.5 * distances[0], distances


def test_bad_input():
    teacher, student = tiny_bert(), tiny_bert(seed=1)
    b = token_batch()
    example = (b["input_ids"], b["attention_mask"])
    with pytest.raises(EdgetierError, match="no module 'encoder.layer.9'"):
        compress.apply(student, FeatureDistillConfig(layers=[{"student": "encoder.layer.9"}]), teacher=teacher,
                       example_inputs=example)
    with pytest.raises(EdgetierError, match="needs a teacher"):
        compress.apply(student, FeatureDistillConfig(), example_inputs=example)
    with pytest.raises(ValueError, match="nothing to distill"):
        FeatureDistillConfig(output_weight=0)
    conv = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
    with pytest.raises(EdgetierError, match="differ in one dimension only"):  # 8×8 maps vs 4×4 at another width
        compress.apply(conv, FeatureDistillConfig(layers=[{"student": "layer1", "teacher": "layer2"}]),
                       teacher=build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=16),
                       example_inputs=(torch.zeros(1, 1, 8, 8),))
