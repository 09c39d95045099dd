"""Training-only stages."""
