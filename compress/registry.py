"""The one explicit table of technique kinds: recipe `kind` -> technique class.

Adding a technique means importing it here and adding one line. No package walking, no
import-time discovery, no swallowed ImportError.
"""

from __future__ import annotations

from compress.core.config import TechniqueConfig
from compress.core.errors import RecipeError
from compress.core.technique import BaseTechnique
from compress.distill.feature import FeatureDistill
from compress.distill.technique import Distill
from compress.exits.technique import EarlyExit
from compress.nas.technique import NAS
from compress.prune.lottery import LotteryTicket
from compress.prune.snip import Snip
from compress.prune.structured import StructuredPrune
from compress.prune.unstructured import UnstructuredPrune
from compress.quant.mixed_precision import MixedPrecision
from compress.quant.ptq import PTQInt8
from compress.quant.qat import QAT
from compress.share.clustering import Cluster
from compress.share.hashing import HashShare
from compress.tune.finetune import Finetune

REGISTRY: dict[str, type[BaseTechnique]] = {
    "distill": Distill,
    "feature_distill": FeatureDistill,
    "early_exit": EarlyExit,
    "finetune": Finetune,
    "ptq_int8": PTQInt8,
    "qat": QAT,
    "mixed_precision": MixedPrecision,
    "cluster": Cluster,
    "hash_share": HashShare,
    "unstructured_prune": UnstructuredPrune,
    "structured_prune": StructuredPrune,
    "lottery_ticket": LotteryTicket,
    "snip": Snip,
    "nas": NAS,
}


def technique_class(kind: str, *, where: str = "kind") -> type[BaseTechnique]:
    """The technique registered under `kind`.

    >>> technique_class("ptq_int8").__name__
    'PTQInt8'
    """
    try:
        return REGISTRY[kind]
    except KeyError:
        raise RecipeError(f"unknown stage kind {kind!r}", where=where,
                          fix=f"use one of: {', '.join(sorted(REGISTRY))}") from None


def config_class(kind: str, *, where: str = "kind") -> type[TechniqueConfig]:
    return technique_class(kind, where=where).config_type


def build(config: TechniqueConfig) -> BaseTechnique:
    """A technique object for `config`."""
    return technique_class(config.kind)(config)
