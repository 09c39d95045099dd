"""The composition matrix: every ordered pair of stage kinds either runs through the pipeline and exports
with parity, or is refused before anything trains, naming both stages; and the README's table is the
one `compress.compose` generates.

The default suite runs the refusals (no training: they stop at the recipe check), the README check, and
the pairs the flagship chains through the pipeline with an ONNX export; `-m slow` runs every other
working pair too, exporting ONNX and LiteRT (measured 2026-11-30: 113 passed in 24 min 55 s on 2 shared cores;
the 54 pairs with feature_distill or partition, added 2026-12-07: 54 passed in 12 min 8 s, load ~6).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import compress
from compress.compose import KINDS, NOT_YET_MEASURED, markdown_matrix, refusal
from compress.core.errors import RecipeError
from compress.registry import REGISTRY
from tests.compose.pairs import STAGES, pair_recipe
from tests.quant.parity import MAX_STEPS

README = Path(__file__).resolve().parents[2] / "README.md"
SHARING = {"cluster", "hash_share"}
# the orders recipes/flagship.yaml chains, and pruning around exits (once refused): in the default suite
FLAGSHIP = [("distill", "structured_prune"), ("structured_prune", "mixed_precision"), ("structured_prune", "ptq_int8"),
            ("distill", "mixed_precision"), ("structured_prune", "early_exit"), ("early_exit", "structured_prune"),
            ("early_exit", "ptq_int8")]
PAIRS = [(a, b) for a in KINDS for b in KINDS]
WORKS = [p for p in PAIRS if refusal(*p) is None and not (p[0] in SHARING and p[1] in SHARING)]
REFUSED = [p for p in PAIRS if refusal(*p) is not None]


def test_every_registered_kind_is_in_the_matrix():
    assert set(KINDS) | set(NOT_YET_MEASURED) == set(REGISTRY) and set(KINDS) == set(STAGES)


def test_the_readme_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- composition-matrix:start -->\n(.*?)\n<!-- composition-matrix:end -->", text, re.S)
    assert found, "README.md lacks the composition-matrix markers"
    assert found.group(1).strip() == markdown_matrix().strip(), "regenerate: python -c 'from compress.compose " \
        "import markdown_matrix; print(markdown_matrix())'"


@pytest.mark.parametrize(("first", "second"), REFUSED, ids=[f"{a}-{b}" for a, b in REFUSED])
def test_a_pair_that_cannot_work_is_refused_before_training(first, second, write_recipe, tmp_path):
    recipe = compress.load_recipe(write_recipe(pair_recipe(first, second)))
    with pytest.raises(RecipeError) as err:
        compress.run(recipe, out_dir=tmp_path / "runs")
    message = str(err.value)
    assert f"stage 'b' ({second}) cannot follow stage 'a' ({first})" in message
    assert refusal(first, second)[0] in message
    assert not list((tmp_path / "runs").rglob("*.onnx"))  # nothing exported, nothing half-written


def _check_pair(first: str, second: str, formats: tuple[str, ...], write_recipe, tmp_path) -> None:
    result = compress.run(compress.load_recipe(write_recipe(pair_recipe(first, second, formats=formats))),
                          out_dir=tmp_path / "runs")
    entry = next(m for m in result.models if m["name"] == "edge")
    assert [s["kind"] for s in entry["stages"]] == [first, second]
    bundle = result.bundles["edge"]
    model_file = next(bundle.glob(f"*.{formats[0]}")) if formats[0] != "onnx" else bundle / "model.onnx"
    if model_file.exists():  # an early-exit bundle holds segments instead of one model file
        assert entry["bytes"] == model_file.stat().st_size  # the headline is the file's size on disk
    parity = entry["parity"]
    if "top1_agreement" in parity:
        # int8 static quantization in onnxruntime vs the float model may flip near-ties; 256 samples: ≤ 3 flips
        assert parity["top1_agreement"] >= 0.98
    if "max_diff_steps" in parity:
        assert parity["max_diff_steps"] <= MAX_STEPS + 1e-4  # QCDQ vs brevitas: rounding order (tests/quant/parity.py)
    # accuracy of the exported file vs the PyTorch model: at most the same few flips on 360 test digits
    assert abs(entry["accuracy"] - entry["torch_accuracy"]) <= 0.02


@pytest.mark.parametrize(("first", "second"), FLAGSHIP, ids=[f"{a}-{b}" for a, b in FLAGSHIP])
def test_a_flagship_pair_runs_and_exports_onnx(first, second, write_recipe, tmp_path):
    _check_pair(first, second, ("onnx",), write_recipe, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("first", "second"), WORKS, ids=[f"{a}-{b}" for a, b in WORKS])
def test_every_working_pair_runs_and_exports_onnx_and_litert(first, second, write_recipe, tmp_path):
    _check_pair(first, second, ("onnx", "tflite"), write_recipe, tmp_path)
