"""The base of every technique's configuration.

A config is frozen, typed data: it validates when built, refuses unknown keys, and
round-trips through plain dicts (and so YAML). Each technique subclasses it with a
`kind: Literal["..."]` field, its name in recipes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from torch import nn

    from compress.targets import Target


class TechniqueConfig(BaseModel):
    """Frozen, strict configuration shared by all techniques.

    `targets` and `ignore` are selectors (see `compress.core.selectors`): which modules the
    technique touches. An empty `targets` means the technique's own default set.

    >>> class Clamp(TechniqueConfig):
    ...     kind: str = "clamp"
    ...     limit: float = 1.0
    >>> Clamp(limit=2).to_dict()
    {'kind': 'clamp', 'targets': [], 'ignore': [], 'limit': 2.0}
    >>> Clamp.from_dict({"kind": "clamp", "limit": 3}).limit
    3.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    targets: tuple[str, ...] = Field(default=(), description="module selectors: name, re:<regex>, type:<Class>")
    ignore: tuple[str, ...] = Field(default=(), description="selectors to leave alone; ignore wins over targets")

    def check_target(self, target: Target) -> None:
        """Raise `EdgetierError` when this config cannot run on `target` (default: always can).

        Called when a recipe loads, for every variant, before any work starts.
        """

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        """Raise `EdgetierError` when this config cannot apply to `model` on `target` (a selector that
        matches nothing, a budget no allowed precision meets, ...). Default: always can.

        Called by the runner on the untrained cloud model, for every variant, before any training.
        """

    def check_after(self, earlier: list[TechniqueConfig], model: nn.Module) -> None:
        """Raise `EdgetierError` when this config cannot follow the `earlier` stages of its variant
        (e.g. clustering a layer a hash_share stage before it hashes). Default: always can.

        Called by the runner with the untrained cloud model, after `check_model`, before any training.
        """

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        return cls.model_validate(data)
