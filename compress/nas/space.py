"""The search space as NNI mutables.

`SearchSpace` is an NNI model space (`nni.nas.space.BaseModelSpace`) whose leaves are
`nni.choice` categoricals, one per stage and dimension (``stage2_depth``, ``stage1_kernel``, ...).
Freezing a sample gives a plain `Arch` dict; a sample whose cost breaks the budget fails NNI's
validation (`ConstraintViolation`), so NNI's strategies resample it (their `RetrySamplingHelper`)
and it is never trained. Every rejection is kept for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import nni
from nni.mutable import (
    ConstraintViolation,
    LabeledMutable,
    Mutable,
    MutableDict,
    Sample,
    SampleValidationError,
)
from nni.nas.space import BaseModelSpace

from compress.nas.arch import Arch, arch_key
from compress.nas.config import SpaceSpec
from compress.nas.costs import DIMS, STAGES, Cost, arch_from_sample


class SearchSpace(BaseModelSpace):
    """NNI model space over `SpaceSpec`; `freeze(sample)` returns the `Arch` or fails NNI validation
    when the candidate breaks the budget (see the module docstring).

    >>> space = SearchSpace(SpaceSpec(depth=(1,), width_mult=(0.5,), kernel=(3, 5), expansion=(1.0,)),
    ...                     lambda arch: None)
    >>> sorted(space.simplify())[:2], len(list(space.grid()))
    (['stage1_depth', 'stage1_expansion'], 8)
    """

    def __init__(self, spec: SpaceSpec, cost: Callable[[Arch], Cost | None], *, channel_multiple: int = 1) -> None:
        self.spec, self.cost, self.channel_multiple = spec, cost, channel_multiple
        self.rejected: dict[str, tuple[Arch, Cost]] = {}
        self._choices = MutableDict({f"stage{i}_{d}": nni.choice(f"stage{i}_{d}", list(getattr(spec, d)))
                                     for i in range(1, STAGES + 1) for d in DIMS})

    def leaf_mutables(self, is_leaf: Callable[[Mutable], bool]) -> Iterable[LabeledMutable]:
        yield from self._choices.leaf_mutables(is_leaf)

    def check_contains(self, sample: Sample) -> SampleValidationError | None:
        error = self._choices.check_contains(sample)
        if error is not None:
            return error
        arch = self.arch(sample)
        cost = self.cost(arch)
        if cost is not None and not cost.feasible:
            self.rejected[arch_key(arch)] = (arch, cost)
            return ConstraintViolation(f"over budget: {cost.reason}")
        return None

    def freeze(self, sample: Sample) -> Arch:
        self.validate(sample)
        return self.arch(sample)

    def arch(self, sample: Sample) -> Arch:
        return arch_from_sample(self.spec, sample, channel_multiple=self.channel_multiple)
