"""Early exits (BranchyNet / DDNN; survey section III-B-1): branches, joint training, segments."""
