"""Pruning: unstructured magnitude, structured (dependency-aware, torch-pruning), lottery ticket, SNIP."""
