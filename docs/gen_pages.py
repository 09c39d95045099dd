"""Pages the site builds from the code and data (run by mkdocs-gen-files at build time).

Nothing here is hand-kept: the recipe reference comes from the recipe's JSON schema (what
`edgetier schema` prints), the targets page from `hw_targets/*.yaml`, the configuration reference
from the technique registry, and the tutorials are the notebooks the test suite executes. The
functions return text so `tests/test_docs.py` can check the pages without building the site.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The smallest valid `with` for kinds that have required fields; every example on the
# configuration page is validated by tests/test_docs.py.
REQUIRED_WITH: dict[str, dict[str, Any]] = {
    "early_exit": {"after": ["layer1"]},
    "snip": {"ratio": 0.5},
    "unstructured_prune": {"ratio": 0.5},
    "structured_prune": {"ratio": 0.5},
}


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    kind = prop.get("type", "any")
    if kind == "array" and "items" in prop:
        return f"list of {_type(prop['items'])}"
    return str(kind)


def _fields_table(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    if not props:
        return ["(no fields)"]
    lines = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for key, prop in props.items():
        default = "required" if key in required else (f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
        bounds = ", ".join(f"{name} {prop[k]}" for k, name in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                               ("maximum", "≤"), ("exclusiveMaximum", "<"))
                           if k in prop)
        text = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(prop)}{' (' + bounds + ')' if bounds else ''} | {default} | {text} |")
    return lines


def recipes_page() -> str:
    from compress.recipe import recipe_json_schema
    from compress.registry import REGISTRY

    schema = recipe_json_schema()
    defs = schema["$defs"]
    out = ["# Recipe reference", "",
           "A recipe is one YAML file: the cloud model, the data, an ordered list of stages and the variants "
           "that run them. This page is generated from the recipe's JSON schema — the same one "
           "`edgetier schema` prints for editor completion. `edgetier validate RECIPE` checks a file "
           "against it (and against the targets and budgets) without running anything.", "",
           "## Top level", "", *_fields_table(schema), ""]
    for name in sorted(defs):
        if name in ("Stage",):
            continue
        out += [f"### {name}", "", *_fields_table(defs[name]), ""]
    out += ["## Stage kinds", "",
            "Each stage is `{name, kind, with, train}`; `with` takes the keys of its kind below.", ""]
    for kind, tech in sorted(REGISTRY.items()):
        cls = tech.config_type
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        s = cls.model_json_schema()
        s["properties"].pop("kind", None)
        out += [f"### `{kind}`", "", doc, "", *_fields_table(s), "", "```yaml", stage_example(kind), "```", ""]
    return "\n".join(out)


def stage_example(kind: str) -> str:
    """A minimal stage of `kind`, as YAML (validated by the tests)."""
    import yaml

    stage = {"name": kind.replace("_", "-"), "kind": kind}
    if kind in REQUIRED_WITH:
        stage["with"] = REQUIRED_WITH[kind]
    return yaml.safe_dump({"stages": [stage]}, sort_keys=False).strip()


def targets_page() -> str:
    from compress.targets import load_target

    out = ["# Hardware targets", "",
           "Every target is validated, frozen data in `hw_targets/*.yaml`; techniques read capabilities from "
           "it and never branch on a device name. `edgetier targets show NAME` prints one. The figures below "
           "come from the files, with the datasheets they cite.", "",
           "| target | tier | runtime | format | throughput (GMAC/s) | RAM budget | storage budget | link |",
           "|---|---|---|---|---|---|---|---|"]
    targets = [load_target(p.stem) for p in sorted((ROOT / "hw_targets").glob("*.yaml"))]
    for t in targets:
        gmacs = ", ".join(f"{k} {v:g}" for k, v in t.compute.throughput_gmacs.items())
        link = f"{t.link.bandwidth_mbps:g} Mbit/s, {t.link.rtt_ms:g} ms RTT to {t.link.to}" if t.link else "—"
        out.append(f"| `{t.name}` | {t.tier} | {t.runtime} | {t.export_format} | {gmacs} | "
                   f"{t.memory.ram_kb / 1024:g} MiB | {t.memory.storage_kb / 1024:g} MiB | {link} |")
    for t in targets:
        out += ["", f"## `{t.name}` — {t.display_name}", "", " ".join(t.description.split()), "",
                f"**Sources.** {' '.join(t.source.datasheet.split())}", ""]
        if t.source.notes:
            out += [" ".join(t.source.notes.split()), ""]
    return "\n".join(out)


def configs_page() -> str:
    from compress.registry import REGISTRY

    out = ["# Technique configurations", "",
           "One frozen config class per stage kind (`extra` keys are refused). Build one in Python and pass "
           "it to `compress.apply`, or write its fields under a stage's `with` in a recipe.", ""]
    for kind, tech in sorted(REGISTRY.items()):
        cls = tech.config_type
        out += [f"## `{kind}`", "", "```yaml", stage_example(kind), "```", "",
                f"::: {cls.__module__}.{cls.__qualname__}", "    options:", "      show_root_heading: true",
                "      heading_level: 3", ""]
    return "\n".join(out)


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def main() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open("recipes.md", "w") as f:
        f.write(recipes_page())
    with mkdocs_gen_files.open("targets.md", "w") as f:
        f.write(targets_page())
    with mkdocs_gen_files.open("api/configs.md", "w") as f:
        f.write(configs_page())
    for nb in notebooks():
        with mkdocs_gen_files.open(f"tutorials/{nb.name}", "w") as f:
            f.write(nb.read_text(encoding="utf-8"))


if __name__ in ("__main__", "<run_path>"):  # mkdocs-gen-files runs the script with runpy
    main()
