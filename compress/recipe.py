"""Recipes: the YAML that says which model, which data, which stages, and which variants.

`load_recipe(path)` parses and validates everything a run will need before any work starts —
keys, types, stage kinds and their parameters, variant overrides, targets, checkpoints and
factories — so a bad recipe fails in a second with the file, the key path and the line.
`recipe.resolve("end")` turns one variant into a typed `Plan`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, field_validator

from compress.core.checkpoints import load_state_dict_file
from compress.core.config import TechniqueConfig
from compress.core.errors import EdgetierError, RecipeError
from compress.core.train import TrainSpec
from compress.core.yamlfile import KeyPath, excerpt, format_path, load_yaml_mapping
from compress.registry import REGISTRY, config_class
from compress.targets import Target, load_target

# Names become folder and file names: a plain name, at most 64 characters. Pydantic's `pattern`
# runs in Rust's regex, where `$` is the end of the text; Python code must use `re.fullmatch`
# (Python's `$` also matches before a trailing newline: "end\n" would pass `re.match`).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Folder and file names the run itself writes next to the bundles (names starting with "." are
# already refused by the pattern: temporary folders use them).
RESERVED_VARIANTS = ("cloud", "checkpoints", "report.json", "report.md", "run.json", "cascade.json", "cascade.md")
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit at most


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class TrainPatch(_Strict):
    """Training settings as written in a recipe; unset fields fall back to `defaults.train`."""

    epochs: int | None = Field(None, ge=0, le=10_000, description="passes over the training split, 0 to 10000")
    lr: float | None = Field(None, gt=0, le=10, description="learning rate, above 0 and at most 10")
    batch_size: int | None = Field(None, ge=1, le=65_536, description="samples per step, 1 to 65536")
    optimizer: Literal["adam", "sgd"] | None = None
    weight_decay: float | None = Field(None, ge=0, le=1, description="L2 weight decay, 0 to 1")
    schedule: Literal["constant", "cosine"] | None = Field(None, description="learning-rate schedule: constant, or cosine decay to 0 over the run")
    dropout: bool | None = Field(None, description="false: train with every Dropout off (p = 0), e.g. to distil a "
                                 "pretrained model, whose student should match the teacher's deterministic outputs")


class ModelSpec(BaseModel):
    """The cloud model: a zoo model (`zoo` plus its parameters) or a user `factory`, optionally a checkpoint."""

    model_config = ConfigDict(frozen=True, extra="allow")

    zoo: str | None = None
    factory: str | None = Field(None, description="'package.module:function' returning an nn.Module")
    hf: str | None = Field(None, description="a Hugging Face model folder or installed package, loaded offline")
    task: Literal["sequence_embedding", "text_classification", "image_classification"] | None = Field(
        None, description="with hf: what the model does (its adapter: mean-pooled embedding or logits)")
    output: str | None = Field(None, description="with hf: the output field that is the prediction (default by task)")
    checkpoint: str | None = Field(None, description="state_dict file (loaded with weights_only=True)")
    train: TrainPatch = Field(default_factory=TrainPatch, description="how the cloud model is trained without a checkpoint")

    @property
    def options(self) -> dict[str, Any]:
        """Parameters passed to the zoo builder or factory (every key not named above)."""
        return dict(self.model_extra or {})


class DataSpec(BaseModel):
    """The dataset: `dataset` is `digits`, `mnist1d` or `factory`; other keys are its options."""

    model_config = ConfigDict(frozen=True, extra="allow")

    dataset: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Defaults(_Strict):
    train: TrainPatch = Field(default_factory=TrainPatch)


class Stage(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    train: TrainPatch | None = Field(None, description="train after applying; omitted = no training")


class Variant(_Strict):
    target: str
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="stage name -> `with` keys")
    skip: tuple[str, ...] = ()
    export: tuple[Literal["onnx", "tflite"], ...] = Field(
        (), description="artifact formats to produce, the first being the bundle's model; empty = the target's "
        "export_format (onnx for onnxruntime targets, tflite for litert targets)")


class Cloud(_Strict):
    target: str = "cloud_gpu"


class Recipe(_Strict):
    """A validated recipe. Build it with `load_recipe`; `resolve(variant)` gives a `Plan`."""

    schema_version: StrictInt = Field(ge=1, le=1, description="the recipe format version: 1")
    name: str = Field(pattern=NAME_PATTERN, description="the run folder's name: letters, digits, _ . -, at most 64")
    description: str = Field("", max_length=10_000)
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED, description=f"the run's seed, 0 to {MAX_SEED}")
    model: ModelSpec
    data: DataSpec
    defaults: Defaults = Field(default_factory=Defaults)
    cloud: Cloud = Field(default_factory=Cloud)
    stages: tuple[Stage, ...] = ()
    variants: dict[str, Variant]

    _path: Path = PrivateAttr(default=Path("<recipe>"))
    _lines: dict[KeyPath, int] = PrivateAttr(default_factory=dict)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        import re

        if not variants:
            raise ValueError("a recipe needs at least one variant")
        for name in variants:
            if name in RESERVED_VARIANTS or not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"variant name {excerpt(name)} is reserved ({', '.join(RESERVED_VARIANTS)}) or not "
                                 "a plain folder name (letters, digits, _ . -, not starting with . or -, at most 64)")
        return variants

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        names = [s.name for s in stages]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stage name(s) {', '.join(map(repr, twice))} used more than once; overrides and "
                             "checkpoints find stages by name")
        return stages

    def factories(self) -> list[tuple[KeyPath, str]]:
        """The code this recipe would run: (key path, 'package.module:function') of each factory."""
        found: list[tuple[KeyPath, str]] = []
        if self.model.factory is not None:
            found.append((("model", "factory"), self.model.factory))
        if self.data.dataset == "factory" and self.data.options.get("factory") is not None:
            found.append((("data", "factory"), str(self.data.options["factory"])))
        return found

    # -- where things are ---------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    def where(self, path: KeyPath) -> str:
        """`file:line: key.path` for error messages (the line of the deepest key that exists)."""
        for cut in range(len(path), -1, -1):
            line = self._lines.get(tuple(path[:cut]))
            if line is not None:
                break
        loc = f"{self._path}:{line}" if line else str(self._path)
        return f"{loc}: {format_path(path)}" if path else loc

    @property
    def sha256(self) -> str:
        """Hash of the recipe's content (canonical JSON), recorded in every bundle."""
        return hashlib.sha256(json.dumps(self._raw, sort_keys=True, default=str).encode()).hexdigest()

    def resolve_file(self, relative: str) -> Path:
        """A path written in the recipe, relative to the recipe's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self._path.parent / p)

    # -- plans --------------------------------------------------------------------------------
    def resolve(self, variant: str) -> Plan:
        """The typed plan of one variant: its target and its stages with merged, validated configs."""
        if variant not in self.variants:
            raise RecipeError(f"no variant {variant!r}", where=str(self._path),
                              fix=f"use one of: {', '.join(self.variants)}")
        spec = self.variants[variant]
        vpath: KeyPath = ("variants", variant)
        target = self._target(spec.target, (*vpath, "target"))
        stage_names = [s.name for s in self.stages]
        for name in spec.overrides:
            if name not in stage_names:
                raise RecipeError(f"override for stage {name!r}, which does not exist",
                                  where=self.where((*vpath, "overrides", name)),
                                  fix=f"use a stage name from `stages`: {', '.join(stage_names) or '(none)'}")
        for i, name in enumerate(spec.skip):
            if name not in stage_names:
                raise RecipeError(f"skip of stage {name!r}, which does not exist", where=self.where((*vpath, "skip", i)),
                                  fix=f"use a stage name from `stages`: {', '.join(stage_names) or '(none)'}")
        base_train = TrainSpec().patched(self.defaults.train)
        planned = []
        for index, stage in enumerate(self.stages):
            if stage.name in spec.skip:
                continue
            override = spec.overrides.get(stage.name, {})
            config = self._stage_config(index, stage, override, vpath)
            try:
                config.check_target(target)
            except EdgetierError as exc:
                raise RecipeError(exc.problem, where=self.where((*vpath, "target")), fix=exc.fix) from None
            train = base_train.patched(stage.train) if stage.train is not None else None
            planned.append(PlannedStage(index=index, name=stage.name, kind=stage.kind, config=config, train=train))
        export = tuple(dict.fromkeys(spec.export)) or (target.export_format,)
        return Plan(recipe=self, variant=variant, target=target, stages=tuple(planned), export=export)

    def _stage_config(self, index: int, stage: Stage, override: dict[str, Any], vpath: KeyPath) -> TechniqueConfig:
        spath: KeyPath = ("stages", index)
        cls = config_class(stage.kind, where=self.where((*spath, "kind")))
        base = {**stage.with_, "kind": stage.kind}
        _validate(cls, base, self, (*spath, "with"))
        merged = {**base, **override}
        config = _validate(cls, merged, self, (*spath, "with"),
                           override_keys=set(override), override_path=(*vpath, "overrides", stage.name))
        teacher = getattr(config, "teacher_checkpoint", None)
        if teacher is not None:  # a recipe's paths are relative to the recipe, not the current folder
            key = (*vpath, "overrides", stage.name) if "teacher_checkpoint" in override else (*spath, "with")
            path = self.resolve_file(teacher).resolve()
            load_state_dict_file(path, where=self.where((*key, "teacher_checkpoint")))
            config = config.model_copy(update={"teacher_checkpoint": str(path)})
        return config

    def cloud_target(self) -> Target:
        return self._target(self.cloud.target, ("cloud", "target"))

    def _target(self, name: str, path: KeyPath) -> Target:
        """A shipped target by name, or a target YAML file relative to the recipe."""
        source: str | Path = self.resolve_file(name) if name.endswith((".yaml", ".yml")) else name
        try:
            return load_target(source)
        except EdgetierError as exc:
            raise _rewrap(exc, self.where(path)) from None


@dataclass(frozen=True)
class PlannedStage:
    index: int
    name: str
    kind: str
    config: TechniqueConfig
    train: TrainSpec | None


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    variant: str
    target: Target
    stages: tuple[PlannedStage, ...]
    export: tuple[str, ...]


def _rewrap(exc: EdgetierError, where: str) -> RecipeError:
    """`exc` re-raised at a recipe location, keeping what the inner error said about where."""
    problem = f"{exc.where}: {exc.problem}" if exc.where else exc.problem
    return RecipeError(problem, where=where, fix=exc.fix)


def _validate(cls: type[TechniqueConfig], data: dict[str, Any], recipe: Recipe, path: KeyPath, *,
              override_keys: set[str] = frozenset(), override_path: KeyPath = ()) -> TechniqueConfig:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        key = loc[0] if loc else None
        full = (*override_path, *loc) if key in override_keys else (*path, *loc)
        raise RecipeError(_explain(err, cls), where=recipe.where(full), fix=_fix(err, cls)) from None


def _explain(err: dict[str, Any], cls: type[BaseModel] | None = None) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key {err['loc'][-1]!r}"
    if err["type"] == "missing":
        return f"missing required key {err['loc'][-1]!r}"
    return f"{err['msg'].removeprefix('Value error, ')} (got {excerpt(err.get('input'))})"


def _fix(err: dict[str, Any], cls: type[BaseModel] | None = None) -> str:
    if err["type"] == "extra_forbidden" and cls is not None:
        return f"the keys allowed here are: {', '.join(k for k in cls.model_fields if k != 'kind')}"
    if err["type"] == "missing":
        return "add the key"
    return "change the value as described; `edgetier schema` prints every key and type"


def load_recipe(path: str | Path) -> Recipe:
    """Load and fully validate a recipe file (every variant is resolved once, so errors surface now).

    >>> from compress.core.resources import shipped_dir
    >>> recipe = load_recipe(shipped_dir("recipes") / "quickstart.yaml")
    >>> recipe.resolve("end").target.tier
    'end'
    """
    path = Path(path)
    data, lines = load_yaml_mapping(path, error=RecipeError, what="recipe")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"{path}:{lines.get(tuple(err['loc']), lines.get(tuple(err['loc'][:-1]), ''))}".rstrip(":")
        raise RecipeError(_explain(err), where=f"{where}: {format_path(tuple(err['loc']))}",
                          fix=_fix(err, _model_at(Recipe, tuple(err["loc"])[:-1]))) from None
    recipe._path, recipe._lines, recipe._raw = path, lines, data
    _check_sources(recipe)
    for name in recipe.variants:
        recipe.resolve(name)
    recipe.cloud_target()
    return recipe


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that holds the key at `loc` (for listing the keys allowed there)."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            nested = [b for a in args for b in getattr(a, "__args__", ()) if isinstance(b, type) and issubclass(b, BaseModel)]
            candidates = nested
        current = candidates[0] if candidates else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def data_options(recipe: Recipe) -> dict[str, Any]:
    """The data options, with a text dataset's tokenizer defaulting to the Hugging Face model's folder."""
    options = recipe.data.options
    if recipe.data.dataset == "text" and options.get("tokenizer") is None and recipe.model.hf is not None:
        options["tokenizer"] = str(hf_source(recipe))
    return options


def hf_source(recipe: Recipe) -> str | Path:
    source = recipe.model.hf or ""
    local = recipe.resolve_file(source)
    return local if local.exists() else source  # a folder next to the recipe, else an installed package


def _check_hf(recipe: Recipe) -> None:
    from compress.models.hf import hf_folder

    m = recipe.model
    if m.zoo is not None or m.factory is not None or m.options:
        raise RecipeError("a Hugging Face model takes only hf, task, output, checkpoint and train",
                          where=recipe.where(("model",)), fix="remove zoo / factory / other keys next to hf")
    if m.task is None:
        raise RecipeError("a Hugging Face model needs its task", where=recipe.where(("model", "hf")),
                          fix="add `task: sequence_embedding`, `text_classification` or `image_classification`")
    try:
        hf_folder(hf_source(recipe))
    except EdgetierError as exc:
        raise RecipeError(exc.problem, where=recipe.where(("model", "hf")), fix=exc.fix) from None


def _check_sources(recipe: Recipe) -> None:
    """Model and data sources: zoo names and parameters, factories that exist (never imported here: a
    recipe runs code only with `trust_code`), checkpoints that load as state dicts."""
    from compress.datasets import check_spec as check_data_spec
    from compress.models import check_spec as check_model_spec

    m = recipe.model
    if m.hf is not None:
        _check_hf(recipe)
    elif (m.zoo is None) == (m.factory is None):
        raise RecipeError("the model needs exactly one of `zoo` or `factory`", where=recipe.where(("model",)),
                          fix="write `zoo: resnet1d` (a reference model) or `factory: package.module:function`")
    try:
        if m.hf is None:
            check_model_spec(zoo=m.zoo, factory=m.factory, options=m.options, imports=False)
    except EdgetierError as exc:
        raise _rewrap(exc, recipe.where(("model", "zoo" if m.zoo else "factory"))) from None
    if m.checkpoint is not None:
        load_state_dict_file(recipe.resolve_file(m.checkpoint), where=recipe.where(("model", "checkpoint")))
    try:
        check_data_spec(recipe.data.dataset, data_options(recipe), seed=recipe.seed, imports=False)
    except EdgetierError as exc:
        raise _rewrap(exc, recipe.where(("data",))) from None


def recipe_json_schema() -> dict[str, Any]:
    """The recipe JSON schema, with each stage kind's `with` keys, for editors' completion."""
    schema = Recipe.model_json_schema(by_alias=True)
    stage = schema["$defs"]["Stage"]
    stage["properties"]["kind"] = {"enum": sorted(REGISTRY), "title": "Kind"}
    stage["allOf"] = [
        {"if": {"properties": {"kind": {"const": kind}}},
         "then": {"properties": {"with": _with_schema(tech.config_type)}}}
        for kind, tech in sorted(REGISTRY.items())
    ]
    return schema


def _with_schema(cls: type[TechniqueConfig]) -> dict[str, Any]:
    s = cls.model_json_schema()
    s["properties"].pop("kind", None)
    s.pop("required", None)
    return s
