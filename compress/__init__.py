"""edgetier: compress one trained cloud model into verified edge and end bundles.

The Python API:

- `compress.apply(model, config, *, target=..., ...)` — one technique; returns `(model, report)`
  plus `.hooks` for training-time techniques to call in your own loop;
- `compress.load_recipe(path)` and `compress.run(recipe, out_dir=...)` — what `edgetier run` does;
- `compress.datasets.load(name)` and `compress.models.build(zoo, ...)` — bundled data and
  reference models.
"""

from compress.api import apply
from compress.bundle_api import export
from compress.core.config import TechniqueConfig
from compress.core.errors import EdgetierError
from compress.core.technique import Hooks, HookSet, Result
from compress.persist import load, save
from compress.pipeline import run
from compress.recipe import load_recipe

__all__ = ["EdgetierError", "HookSet", "Hooks", "Result", "TechniqueConfig", "apply", "export", "load", "load_recipe", "run", "save"]
