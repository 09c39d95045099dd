"""Weight sharing: hash sharing (HashedNets) and cluster sharing (k-means codebooks)."""
