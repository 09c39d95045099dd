"""Which ordered pairs of stage kinds compose, and why the others are refused when a recipe loads.

Every stage takes the model the previous one returns, so most orders simply work (the composition
matrix test, `tests/compose/test_matrix.py`, runs them through the pipeline and exports them). A few
orders cannot mean what they say, and run to a silently wrong or failing result; they are refused
before anything trains, with one paragraph naming both stages and why:

- `nas` after anything: the search trains a new architecture from scratch, so what the earlier
  stage did to the model is discarded;
- a quantizer (`qat`, `mixed_precision`) after a quantizer: every selected layer is already a
  quantized layer, there is nothing left to quantize (give one stage per-layer bits instead);
- `ptq_int8` after `qat` / `mixed_precision`: the model is already quantized and exported as QCDQ;
  post-training int8 would re-quantize already quantized weights with a float exporter;
- `qat`, `mixed_precision`, `cluster`, `hash_share`, `early_exit` after `ptq_int8`: ptq_int8 is a
  plan for the exported file, and each of these replaces the export plan, dropping the int8
  quantization without a word (ptq_int8 goes last);
- `cluster` / `hash_share` after a quantizer: the quantized layers would be replaced by float
  weight-shared ones, undoing the quantization; and a quantizer after them: shared layers are
  not quantized and the QCDQ export does not store them (measured: cluster then qat fails);
- `early_exit` and a training quantizer (`qat`, `mixed_precision`), in either order: exits are
  trained on a float backbone (measured: qat then early_exit, and early_exit then qat, both fail in
  brevitas' backward). `early_exit` then `ptq_int8` works: each exported segment is quantized to
  int8, calibrated on the float features the segments before it hand on;
- `early_exit` twice: one stage lists every exit;
- `structured_prune` after a quantizer or a weight-sharing stage: the dependency graph torch-pruning
  traces holds quantized / shared layers it cannot shrink consistently; prune first;
- a pruning stage after `cluster` / `hash_share`: the shared layers hold no plain weights to prune
  (measured: cluster then unstructured_prune finds nothing); `ptq_int8` after them misses parity;
- `early_exit` after a masked pruning stage: the masks are kept by layer name and the exits'
  wrapper renames the layers (measured: lottery_ticket then early_exit fails).
Orders between `cluster` and `hash_share` (either, or the same twice) are checked per layer by their
own `check_after`: refused only when they would share one layer twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from compress.core.errors import EdgetierError

KINDS = ("finetune", "distill", "feature_distill", "early_exit", "nas", "structured_prune", "unstructured_prune",
         "snip", "lottery_ticket", "cluster", "hash_share", "qat", "mixed_precision", "ptq_int8", "partition")
# registered kinds whose pairs are not measured yet (they arrived in a merge after the matrix was built): the README
# table says so, and the matrix test keeps them out until they are run and added to KINDS
NOT_YET_MEASURED: tuple[str, ...] = ()
QUANTIZERS = ("qat", "mixed_precision")
SHARING = ("cluster", "hash_share")
MASKED = ("unstructured_prune", "snip", "lottery_ticket")  # keep pruning masks by layer name in their hooks
EXPORT_PLANS = ("qat", "mixed_precision", "cluster", "hash_share", "early_exit")  # stages that set the export plan

# (earlier, later) -> why the pair is refused, and how to fix it
_RULES: list[tuple[Sequence[str], Sequence[str], str, str]] = [
    (KINDS, ("nas",), "nas trains a new architecture from scratch, so what {earlier} did to the model would be "
     "discarded", "put the nas stage first"),
    (QUANTIZERS, QUANTIZERS, "{earlier} has already quantized every selected layer, so {later} would find nothing "
     "to quantize", "use one quantization stage (per-layer bits: qat `layers`, or mixed_precision)"),
    (QUANTIZERS, ("ptq_int8",), "the model is already quantized by {earlier} (a QCDQ export); ptq_int8 would "
     "re-quantize quantized weights through the float exporter", "remove ptq_int8, or use it instead of {earlier}"),
    (("ptq_int8",), EXPORT_PLANS, "ptq_int8 quantizes the exported file, and {later} replaces the export plan, "
     "so the int8 quantization would be dropped", "put ptq_int8 last"),
    (QUANTIZERS, SHARING, "{later} would replace the layers {earlier} quantized by float weight-shared ones, "
     "undoing the quantization", "quantize or share a layer, not both (16 clusters already store 4-bit indices)"),
    (SHARING, QUANTIZERS, "the layers {earlier} shares are codebook / hashed layers, which {later} does not "
     "quantize, and the QCDQ export does not store them", "quantize first, or `ignore` the shared layers in {later} "
     "and use a separate variant"),
    (QUANTIZERS, ("early_exit",), "exit branches are attached to and trained on float stages, and after {earlier} "
     "the backbone is quantized", "add the exits first and quantize after them with ptq_int8, or quantize in a "
     "variant without exits"),
    (("early_exit",), QUANTIZERS, "{later} cannot train an early-exit model: the exit branches' float outputs "
     "reach brevitas' quantizers without a gradient", "use ptq_int8 after early_exit (int8 segments), or quantize "
     "in a variant without exits"),
    (("early_exit",), ("early_exit",), "the model already has exits after {earlier}", "use one early_exit stage "
     "and list every exit in its `after`"),
    (SHARING, MASKED, "after {earlier} the layers hold codebooks or hashed weights, not weights {later} can "
     "prune", "prune first ({earlier} keeps the zeros with preserve_sparsity / stores what is left)"),
    (SHARING, ("ptq_int8",), "the export stores {earlier}'s shared layers as codebooks / hashed weights; ptq_int8 "
     "re-quantizes a float graph (measured: hash_share then ptq_int8 missed the parity threshold, 96.9 % top-1)",
     "use {earlier} or ptq_int8 in a variant, not both"),
    (MASKED, ("early_exit",), "{earlier}'s masks are kept by layer name, and early_exit wraps the model so the "
     "names change (measured: the masks no longer find 'stem.conv')", "add the exits first, then prune"),
    ((*QUANTIZERS, *SHARING), ("structured_prune",), "structured pruning shrinks the plain "
     "Conv/Linear channels torch-pruning traces, and after {earlier} the model holds layers or branches it cannot "
     "shrink consistently", "prune before {earlier}"),
]


def refusal(earlier: str, later: str) -> tuple[str, str] | None:
    """Why `later` cannot follow `earlier` in a variant, and the fix; None when the order works.

    >>> refusal("structured_prune", "qat") is None
    True
    >>> refusal("qat", "nas")[0]
    'nas trains a new architecture from scratch, so what qat did to the model would be discarded'
    """
    for before, after, why, fix in _RULES:
        if earlier in before and later in after:
            return why.format(earlier=earlier, later=later), fix.format(earlier=earlier, later=later)
    return None


def check_order(earlier: Sequence[tuple[str, str]], name: str, kind: str) -> None:
    """Raise `EdgetierError` naming both stages when stage `name` (`kind`) cannot follow one of `earlier`
    (`(name, kind)` pairs, in order).

    >>> check_order([("ptq", "ptq_int8")], "q4", "qat")
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: stage 'q4' (qat) cannot follow stage 'ptq' (ptq_int8): ptq_int8 quantizes ...
    """
    for before_name, before_kind in earlier:
        found = refusal(before_kind, kind)
        if found is not None:
            why, fix = found
            raise EdgetierError(f"stage {name!r} ({kind}) cannot follow stage {before_name!r} ({before_kind}): {why}",
                                fix=fix)


def markdown_matrix() -> str:
    """The README's table: one row per earlier kind, one column per later kind; ✓ works, a number
    names the reason below the table (`*` checked per layer by the stage itself).

    >>> markdown_matrix().splitlines()[0].startswith("| earlier ↓ / later → |")
    True
    """
    reasons: list[str] = []
    rows = ["| earlier ↓ / later → | " + " | ".join(f"`{k}`" for k in KINDS) + " |",
            "|---|" + "---|" * len(KINDS)]
    for earlier in KINDS:
        cells = []
        for later in KINDS:
            found = refusal(earlier, later)
            if found is None:
                cells.append("✓*" if earlier in SHARING and later in SHARING else "✓")
                continue
            why = found[0].replace(earlier, "{earlier}").replace(later, "{later}") if False else _generic(earlier, later)
            if why not in reasons:
                reasons.append(why)
            cells.append(f"✗{reasons.index(why) + 1}")
        rows.append(f"| `{earlier}` | " + " | ".join(cells) + " |")
    notes = [f"{i}. {why}" for i, why in enumerate(reasons, start=1)]
    return "\n".join([*rows, "", "✓ works (run and exported by the matrix test: the flagship's pairs by default, every one under "
                      "`-m slow`) · ✗n refused when the recipe loads:",
                      "", *notes, "", "\\* works unless both stages would share the same layer (their own check).",
                      *(["", "Not measured yet, so neither in the table nor refused: "
                          f"{', '.join(f'`{k}`' for k in NOT_YET_MEASURED)}."] if NOT_YET_MEASURED else [])])


def _generic(earlier: str, later: str) -> str:
    """The rule's reason and fix with the kinds left generic, so one footnote serves a whole rule."""
    for before, after, why, fix in _RULES:
        if earlier in before and later in after:
            return f"{why.format(earlier='the earlier stage', later='the later stage')} — fix: " \
                   f"{fix.format(earlier='the earlier stage', later='the later stage')}."
    raise AssertionError((earlier, later))
