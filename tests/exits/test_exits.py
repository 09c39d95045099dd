"""Early exits: branches, joint loss, segments, calibration, and the exported bundle's policy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

import compress
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.exits.branches import EarlyExitModel
from compress.exits.calibrate import calibrate
from compress.exits.segments import split
from compress.exits.technique import EarlyExit, EarlyExitConfig
from compress.models import build
from export import runtime
from export.policy import score

MODELS = [("resnet1d", (1, 40)), ("resnet2d", (1, 8, 8)), ("transformer", (1, 40)), ("transformer", (1, 8, 8))]


def _model(zoo, shape):
    torch.manual_seed(0)
    return build(zoo, input_shape=shape, num_classes=5, **({"width": 8} if zoo.startswith("resnet") else {"dim": 16}))


@pytest.mark.parametrize("zoo,shape", MODELS)
@pytest.mark.parametrize("head", ["pool_fc", "conv_pool_fc", "sepconv_pool_fc"])
def test_exits_attach_and_segments_chain_to_the_same_logits(zoo, shape, head):
    model = _model(zoo, shape)
    reference = copy.deepcopy(model).eval()
    exit_model, report = compress.apply(model, EarlyExitConfig(after=("layer1", "layer2"), head=head))
    assert isinstance(exit_model, EarlyExitModel) and list(report["layers"]) == ["layer1", "layer2"]
    exit_model.eval()
    x = torch.randn(6, *shape)
    with torch.no_grad():
        # eval forward is the untouched backbone: exits add nothing to the final path
        torch.testing.assert_close(exit_model(x), reference(x), rtol=0, atol=0)
        logits = exit_model.all_logits(x)
        assert [tuple(t.shape) for t in logits] == [(6, 5)] * 3
        chained, feed = [], x
        for segment in split(exit_model):
            out = segment(feed)
            if isinstance(out, tuple):
                chained.append(out[0])
                feed = out[1]
            else:
                chained.append(out)
    for a, b in zip(chained, logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same ops in the same order


def test_sepconv_head_macs_match_a_hand_count():
    from compress.core.measure import count_macs
    from compress.exits.branches import ExitHead

    head = ExitHead((32, 20), 10, kind="sepconv_pool_fc", kernel=5).eval()
    # depthwise 5-tap and pointwise 32->64 at stride 2 (length 10), then the same at 64->64, then FC 64->10
    expected = 32 * 5 * 10 + 32 * 64 * 10 + 64 * 5 * 10 + 64 * 64 * 10 + 64 * 10
    assert count_macs(head, (torch.zeros(1, 32, 20),)) == expected
    conv = ExitHead((32, 20), 10, kind="conv_pool_fc", kernel=5).eval()
    assert count_macs(head, (torch.zeros(1, 32, 20),)) < count_macs(conv, (torch.zeros(1, 32, 20),))


def test_joint_loss_trains_the_exits_in_a_users_loop():
    model = _model("resnet1d", (1, 40))
    result = compress.apply(model, EarlyExitConfig(after=("layer1",), weights=(0.5, 1.0)))
    model, hooks = result.model, result.hooks
    x, y = torch.randn(8, 1, 40), torch.randint(0, 5, (8,))
    model.train()
    out = model(x)
    extra = hooks.loss(model, x, out, y)
    # eq. 6 with the final weight 1: the hook adds w_1 * CE(exit_1)
    torch.testing.assert_close(extra, 0.5 * F.cross_entropy(model.exit_logits[0], y))
    (F.cross_entropy(out, y) + extra).backward()
    assert model.exits["layer1"].fc.weight.grad.abs().sum() > 0


def test_a_trained_early_exit_model_deep_copies_and_later_stages_can_prune_it():
    # pruning stages copy the model; a training forward leaves non-leaf exit logits behind, which
    # torch's tensors refuse to deep-copy
    model = compress.apply(_model("resnet1d", (1, 40)), EarlyExitConfig(after=("layer1",), weights=(0.5, 1.0))).model
    model.train()
    out = model(torch.randn(8, 1, 40))
    (out.sum() + model.exit_logits[0].sum()).backward()
    clone = copy.deepcopy(model)
    assert clone.exit_logits == [] and len(model.exit_logits) == 1  # the copy starts without the batch's graph
    assert clone.exits["layer1"].fc.weight is not model.exits["layer1"].fc.weight
    x = torch.randn(3, 1, 40)
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))  # same weights: the same function
    assert model.exit_logits == []  # eval drops the last training batch's logits


def test_restore_rebuilds_the_exits_so_the_state_dict_loads():
    model = _model("resnet2d", (1, 8, 8))
    technique = EarlyExit(EarlyExitConfig(after=("layer1",)))
    ctx = Context(example_inputs=model.example_inputs())
    trained = technique.apply(copy.deepcopy(model), ctx).model.eval()
    with torch.no_grad():
        for p in trained.exits.parameters():
            p.add_(0.5)
    fresh = technique.restore(copy.deepcopy(model), {}, ctx).model.eval()
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh.all_logits(x)[0], trained.all_logits(x)[0])


@pytest.mark.parametrize("kwargs,message", [
    ({"after": ()}, "at least 1"),
    ({"after": ("layer1", "layer1")}, "twice"),
    ({"after": ("layer1",), "weights": (1.0,)}, "needs 2 values"),
    ({"after": ("layer1",), "target_accuracy": 0.9, "exit_rate": 0.5}, "not target_accuracy and exit_rate"),
    ({"after": ("layer1",), "thresholds": (1.5,)}, "in \\[0, 1\\]"),
    ({"after": ("layer1",), "thresholds": (0.5, 0.5)}, "one value per exit"),
    ({"after": ("layer1",), "head_kernel": 4}, "odd"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        EarlyExitConfig(**kwargs)


@pytest.mark.parametrize("after,message", [(("layer9",), "not top-level stages"), (("head",), "final classifier"),
                                           (("layer2", "layer1"), "follow the model's order")])
def test_exits_at_impossible_places(after, message):
    with pytest.raises(EdgetierError, match=message):
        EarlyExitConfig(after=after).check_model(_model("resnet1d", (1, 40)), None)


def test_calibration_meets_the_target_on_the_calibration_data():
    rng = np.random.default_rng(0)
    n, classes = 2000, 4
    y = rng.integers(0, classes, n)
    # an early exit that is right more often when it is more confident, as trained exits are
    confidence = rng.uniform(0, 1, n)
    right = rng.uniform(0, 1, n) < 0.4 + 0.6 * confidence
    predicted = np.where(right, y, (y + rng.integers(1, classes, n)) % classes)
    early = rng.normal(0, 0.1, (n, classes))
    early[np.arange(n), predicted] += 4 * confidence
    final = np.eye(classes)[y] * 5 + rng.normal(0, 1, (n, classes))
    for target in (0.85, 0.95):
        cal = calibrate([early, final], y, criterion="normalized_entropy", target_accuracy=target)
        leave = score(early, "normalized_entropy") <= cal.thresholds[0]
        assert 0 < leave.mean() < 1
        assert (early[leave].argmax(1) == y[leave]).mean() >= target  # exactly the rule it calibrates by
    loose = calibrate([early, final], y, criterion="confidence", target_accuracy=0.85).thresholds[0]
    strict = calibrate([early, final], y, criterion="confidence", target_accuracy=0.95).thresholds[0]
    raw = calibrate([early, final], y, criterion="confidence", target_accuracy=0.95, z=0.0).thresholds[0]
    assert raw < strict  # the confidence bound admits fewer samples than the raw accuracy would
    assert strict > loose  # a higher accuracy target demands more confidence
    rate = calibrate([early, final], y, criterion="confidence", exit_rate=0.3)
    assert (score(early, "confidence") >= rate.thresholds[0]).mean() == pytest.approx(0.3, abs=0.01)


def test_pipeline_exports_segments_and_the_runtime_runs_the_policy(tiny_recipe, write_recipe, tmp_path):
    tiny_recipe["stages"] = [
        {"name": "exits", "kind": "early_exit", "with": {"after": ["layer1", "layer2"], "target_accuracy": 0.8}},
        {"name": "distill", "kind": "distill", "with": {"temperature": 3, "alpha": 0.5}, "train": {"epochs": 3}},
    ]
    tiny_recipe["variants"] = {"end": {"target": "rpi4"}}
    recipe = compress.load_recipe(write_recipe(tiny_recipe))
    result = compress.run(recipe, out_dir=tmp_path / "runs")
    entry = result.models[-1]
    bundle = runtime.load(result.bundles["end"])
    # rpi4 runs LiteRT: the segments are .tflite files, run by the same progressive runtime
    assert [s["file"] for s in bundle.manifest["model"]["segments"]] == [f"segment_{k}.tflite" for k in range(3)]
    assert entry["format"] == "tflite" and entry["runtime"] == "litert"
    assert [e["after"] for e in bundle.exits] == ["layer1", "layer2"]
    data = compress.datasets.load("digits", seed=0)
    logits, taken = bundle.predict(data.test.x, batch_size=64, return_exits=True)
    # the report's numbers, re-measured through the device runtime (batching cannot change a decision)
    assert float((logits.argmax(1) == data.test.y).mean()) == pytest.approx(entry["accuracy"])
    shares = [float((taken == k).mean()) for k in range(3)]
    assert shares == pytest.approx(entry["exits"]["exit_share"])
    assert sum(shares) == pytest.approx(1.0)
    assert entry["macs"] <= entry["exits"]["full_macs"]


@pytest.mark.parametrize("target", ["rpi4", "jetson_orin_nano"])  # LiteRT (.tflite) and onnxruntime (.onnx) segments
def test_runtime_exit_decisions_equal_the_pytorch_policy(tmp_path, target):
    from compress.core.train import TrainSpec, fit
    from compress.deploy import BundleSpec
    from compress.deploy_exits import deploy_exits
    from compress.targets import load_target
    from export.policy import exits as passes

    data = compress.datasets.load("digits", seed=0)
    torch.manual_seed(0)
    model = build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=8)
    result = compress.apply(model, EarlyExitConfig(after=("layer1", "layer2"), criterion="confidence",
                                                   exit_rate=0.3))
    fit(result.model, data.train, TrainSpec(epochs=2, lr=0.01, batch_size=64), hooks=result.hooks)
    spec = BundleSpec("end", load_target(target), "t", "0" * 64, 0)
    deploy_exits(result.model, spec, data=data, example_inputs=result.model.example_inputs(), export_plan=None,
                 stages=[], out_dir=tmp_path / "end")
    bundle = runtime.load(tmp_path / "end")
    assert bundle.manifest["model"]["format"] == {"rpi4": "tflite", "jetson_orin_nano": "onnx"}[target]
    _, taken = bundle.predict(data.test.x, return_exits=True)
    with torch.no_grad():
        logits = [t.numpy() for t in result.model.eval().all_logits(torch.from_numpy(data.test.x))]
    expected = np.full(len(data.test.y), 2)
    for k, exit_spec in reversed(list(enumerate(bundle.exits))):  # the first passing exit wins
        expected[passes(logits[k], "confidence", exit_spec["threshold"])] = k
    # the same thresholds on PyTorch's logits; a sample exactly at a threshold could flip between
    # runtimes (fp32 differences ~1e-6), so allow at most one such sample
    assert (taken != expected).sum() <= 1
    assert 0 < (taken == 0).mean() < 1


def test_an_unreachable_target_accuracy_says_what_is_reachable():
    y = np.array([0, 1, 0, 1])
    # the most confident half is wrong: no prefix of the ranking does better than 50 %
    early = np.array([[0.0, 5.0], [5.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    final = np.eye(2)[y] * 3
    with pytest.raises(EdgetierError, match=r"best reachable \(lower confidence bound\) is 50.00%"):
        calibrate([early, final], y, criterion="confidence", target_accuracy=0.99, z=0.0)


def test_teacher_with_other_classes_is_refused():
    from compress.distill.technique import DistillConfig

    teacher = _model("resnet1d", (1, 40))  # 5 classes
    torch.manual_seed(1)
    student = build("resnet1d", input_shape=(1, 40), num_classes=3, width=8)
    with pytest.raises(EdgetierError, match="teacher predicts 5 classes and the student 3"):
        compress.apply(student, DistillConfig(), teacher=teacher)
