"""The import rules docs/architecture.md states, checked on the source: a module that breaks one
fails here, naming the import, before the layering quietly erodes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daram"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules ``path`` imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def daram_imports(path: Path, top_level_only: bool = False) -> set[str]:
    own = module_name(path)
    return {m for m in imports(path, top_level_only) if m.split(".")[0] == "daram" and m != own}


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# Leaf modules: everything else may import them; they import no other part of daram.
LEAVES = ("daram.errors", "daram.text", "daram.units")


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_follow_the_layers(path):
    name = module_name(path)
    found = daram_imports(path)
    if allowed(name, LEAVES):
        rule = ("daram.errors",)
    elif name.startswith("daram.storage"):
        rule = ("daram.errors", "daram.storage")  # the store knows nothing of settings or stages
    elif name == "daram.config":
        rule = LEAVES
    elif name.startswith("daram.pipeline"):
        rule = (*LEAVES, "daram.config", "daram.storage", "daram.pipeline")  # never the CLI
    else:
        return  # cli, docgen, template and __main__ sit on top
    wrong = sorted(m for m in found if not allowed(m, rule) and m not in ("daram", "daram.__version__"))
    assert not wrong, f"{name} imports {wrong}; docs/architecture.md says which way imports run"


def test_storage_never_imports_torch():
    for path in (PACKAGE / "storage").rglob("*.py"):
        heavy = {m for m in imports(path) if m.split(".")[0] in ("torch", "transformers")}
        assert not heavy, f"{module_name(path)} imports {sorted(heavy)}"


def test_the_cli_imports_pipelines_only_inside_commands():
    """``daram --help`` stays instant: torch and transformers load only when a command runs."""
    top = daram_imports(PACKAGE / "cli.py", top_level_only=True)
    assert not [m for m in top if m.startswith("daram.pipeline")], sorted(top)


def test_stages_reach_the_store_only_through_its_package():
    """``from daram.storage.store import ...`` in a stage is how the layout leaked out before."""
    for path in (PACKAGE / "pipeline").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = sorted({node.module for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("daram.storage.")})
        assert not inner, f"{module_name(path)} imports {inner}; use what daram.storage exports"
