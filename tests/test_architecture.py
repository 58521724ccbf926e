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
    elif name == "daram.data":  # public: reads the store with the stages' checks, never settings or the CLI
        rule = (*LEAVES, "daram.storage", "daram.pipeline.batches")
    elif name == "daram.losses":  # public: the training loss's own code, nothing else
        rule = (*LEAVES, "daram.pipeline.losses")
    elif name.startswith("daram.pipeline"):
        rule = (*LEAVES, "daram.config", "daram.storage", "daram.pipeline")  # never the CLI
    else:
        return  # cli, docgen, template and __main__ sit on top
    wrong = sorted(m for m in found if not allowed(m, rule) and m not in ("daram", "daram.__version__"))
    assert not wrong, f"{name} imports {wrong}; docs/architecture.md says which way imports run"


# The pipeline's folders: one per phase (its recipe and its parts), and the job that runs the phases. What sits
# directly in daram/pipeline/ is shared by several phases.
PHASES = ("prepare", "dump", "train", "eval")
FOLDERS = (*PHASES, "job")


def pipeline_folder(name: str) -> str | None:
    """The folder of daram/pipeline/ that module ``name`` sits in, or None for a shared part (or outside the pipeline)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["daram", "pipeline"] and parts[2] in FOLDERS else None


PIPELINE_MODULES = [p for p in MODULES if module_name(p).startswith("daram.pipeline.")]


@pytest.mark.parametrize("path", PIPELINE_MODULES, ids=[module_name(p) for p in PIPELINE_MODULES])
def test_phases_import_only_themselves_and_shared_parts(path):
    """A shared part imports no phase and not the job; a phase imports itself and the shared parts, never another
    phase or the job; the job may import every phase. So a phase can be read, tested and changed on its own."""
    name = module_name(path)
    own = pipeline_folder(name)
    if own == "job":
        return
    found = {m for m in daram_imports(path) if allowed(m, ("daram.pipeline",))}
    wrong = sorted(m for m in found if (folder := pipeline_folder(m)) is not None and folder != own)
    where = f"the {own} phase" if own else "a shared part of the pipeline"
    assert not wrong, (f"{name} ({where}) imports {wrong}; a phase imports only itself and the shared parts in "
                       "daram/pipeline/ (docs/architecture.md): move what both need up to daram/pipeline/")


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


# The two halves of the teacher kinds: only they may name a kind to branch on it (docs/architecture.md).
KIND_OBJECTS = ("daram.storage.formats", "daram.pipeline.dump_kinds")


def _kind_literals(node: ast.AST, kinds: set[str]) -> list[str]:
    """The kind names among the string constants of ``node`` (a constant, or a tuple / list / set of them)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in kinds]


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_but_the_kind_objects_branches_on_a_kind_name(path):
    """``kind == "draws"``, ``kind in ("sampled", "draws")`` or ``{"topk": ...}[kind]`` outside the kind objects is
    how a new kind came to fail nowhere and work nowhere: look the kind up instead."""
    from daram.storage import TEACHER_FORMATS

    if module_name(path) in KIND_OBJECTS:
        return
    kinds = set(TEACHER_FORMATS)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [f"line {node.lineno}: compares with {k!r}" for k in _kind_literals(side, kinds)]
        elif isinstance(node, ast.Dict):
            found += [f"line {node.lineno}: a table keyed by {k!r}" for key in node.keys if key is not None
                      for k in _kind_literals(key, kinds)]
    assert not found, f"{module_name(path)}: {'; '.join(found)}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the daram modules it imports anywhere (inside functions too: a lazy import is still a dependency)."""
    names = {module_name(p) for p in MODULES}
    return {module_name(p): {m for m in daram_imports(p) if m in names} for p in MODULES}


def test_no_import_cycle():
    """Two modules that import each other (even lazily, even through others) cannot be read, tested or moved apart."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_import_up_a_layer():
    """A package's modules may use what sits beside the package (``train/`` uses ``losses.py``), but what they
    use must not itself reach back into the package: that would put it above and below the package at once."""
    graph = import_graph()
    packages = {m.rsplit(".", 1)[0] for m in graph if m.count(".") > 1} - {"daram"}

    def reaches(start: str, package: str) -> list[str] | None:
        seen, todo = {start}, [[start]]
        while todo:
            path = todo.pop()
            for nxt in graph[path[-1]]:
                if allowed(nxt, (package,)):
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append([*path, nxt])
        return None

    wrong = []
    for package in sorted(packages):
        inside = [m for m in graph if allowed(m, (package,))]
        for module in inside:
            for used in sorted(graph[module]):
                if not allowed(used, (package,)) and used != "daram" and (back := reaches(used, package)):
                    wrong.append(f"{module} -> {' -> '.join(back)}")
    assert not wrong, f"imports that go up a layer and come back: {wrong}"
