"""Weight sharing: hash sharing (HashedNets) and cluster sharing (k-means codebooks).

- `clustering.ClusterConfig` (kind `cluster`) and `hashing.HashShareConfig` (kind `hash_share`):
  the configs to pass to `compress.apply` or to name in a recipe stage;
- `clustering.ClusteredLayer`, `hashing.HashedLayer`: the layers they put in place of Conv/Linear
  layers, which rebuild their weight in forward from compact tensors (`layers.SharedLayer`);
- `kmeans`: 1-D k-means with Han et al.'s linear / density initializations, or k-means++;
- `packing`: sub-byte codes and their unpacking inside the exported graph.
"""
