"""Knowledge distillation from the cloud model into a variant (survey section VI-B)."""
