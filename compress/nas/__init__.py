"""Hardware-aware neural architecture search (`kind: nas`) with NNI strategies, in-process or on Ray."""
