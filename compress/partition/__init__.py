"""Model partitioning across tiers: the operator graph (graph), costs per tier and link (costs),
DADS min-cut (mincut), Neurosurgeon's sweep and the exhaustive check (chain), plans (plan)."""

from compress.partition.plan import PartitionPlan, plan_partition

__all__ = ["PartitionPlan", "plan_partition"]
