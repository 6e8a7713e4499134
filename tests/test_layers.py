"""The package's import graph, read from the source (AST), and the layer contract it must keep.

Every import counts: absolute and relative, at the top or inside a function, and the runtime
imports of a registry (a package that finds its modules with pkgutil and imports them with
importlib). The layers, lowest first, are the sub-packages; the root holds only the core. A module
may import its own layer and the layers below, never one above; no import cycles; nobody imports
another module's _private name; an optional integration is imported by its one seam module only.
Each check is shown to fail on a planted violation.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "competition"
# Lowest first. "core" is the package root's own modules.
LAYERS = ("core", "text", "data", "models", "candidates", "workspace", "results", "run", "stages", "submit", "cli")
CORE = ("competition", "competition.errors", "competition.choices", "competition.progress", "competition.hashing",
        "competition.files")
# An optional dependency -> the one module that may import it (the integration's seam).
SEAMS = {"ray": "competition.run.ray_cluster", "optuna": "competition.stages.search",
         "mlflow": "competition.results.tracking", "kaggle": "competition.submit.leaderboard",
         "openai": "competition.models.chat", "httpx2": "competition.models.chat"}


def package_sources() -> dict[str, tuple[bool, str]]:
    """module name -> (is a package __init__, source text), for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = (path.name == "__init__.py", path.read_text(encoding="utf-8"))
    return found


def _is_registry(tree: ast.AST) -> bool:
    """Finds its own modules (pkgutil.iter_modules(__path__)) and imports them by name at runtime."""
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    return {"iter_modules", "import_module"} <= calls


def import_graph(sources: dict[str, tuple[bool, str]] | None = None) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> internal modules it imports anywhere in its body, private names imported)."""
    sources = package_sources() if sources is None else sources
    graph: dict[str, set[str]] = {name: set() for name in sources}
    private = []
    for name, (is_package, text) in sources.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(text)
        if is_package and _is_registry(tree):
            graph[name] |= {module for module in sources if module.rpartition(".")[0] == name}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in sources and alias.name != name}
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base
                if target in sources and target != name:
                    graph[name].add(target)
                if alias.name.startswith("_") and not alias.name.startswith("__") and base.startswith("competition"):
                    private.append(f"{name} imports {base}.{alias.name}")
    return graph, private


def layer_of(module: str) -> str | None:
    """The layer a module belongs to: "core" for the root's own modules, else its sub-package; None
    for a module in the root that is not core (it has no place in the order)."""
    if module in CORE:
        return "core"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[1:] else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer, and every module outside the layers."""
    found = [f"{module} is in no layer: move it into a sub-package (or make it core)"
             for module in sorted(graph) if layer_of(module) not in LAYERS]
    for module, targets in sorted(graph.items()):
        if layer_of(module) not in LAYERS:
            continue
        for target in sorted(targets):
            if layer_of(target) in LAYERS and LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                found.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    return found


def seam_violations(sources: dict[str, tuple[bool, str]]) -> list[str]:
    """Imports of an optional integration anywhere but its seam module."""
    found = []
    for name, (_, text) in sorted(sources.items()):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in SEAMS and SEAMS[top] != name:
                    found.append(f"{name} imports {module} (only {SEAMS[top]} may)")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_and_no_private_imports():
    graph, private = import_graph()
    assert len(graph) > 30 and graph["competition.run.runner"]  # the walk found the package
    assert cycles(graph) == []
    assert private == []


def test_each_layer_imports_only_its_own_and_lower_layers():
    graph, _ = import_graph()
    # The walk sees relative, absolute and function-level imports and the registry's runtime ones.
    assert "competition.errors" in graph["competition.text.metric"]  # relative, at the top
    assert "competition.candidates.lead" in graph["competition.candidates"]  # the registry's import_module
    assert layer_violations(graph) == []
    sub_packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert sub_packages == set(LAYERS) - {"core"}  # every layer is a folder, every folder a layer


def _planted(module: str, line: str) -> dict[str, tuple[bool, str]]:
    sources = package_sources()
    is_package, text = sources[module]
    sources[module] = (is_package, text + "\n" + line + "\n")
    return sources


def test_the_contract_fails_on_planted_upward_imports():
    absolute = _planted("competition.choices", "from competition.run.runner import run_candidates")
    assert layer_violations(import_graph(absolute)[0]) == [
        "competition.choices (core) imports competition.run.runner (run)"]
    in_a_function = _planted("competition.text.metric", "def plot():\n    from ..submit import history")
    assert layer_violations(import_graph(in_a_function)[0]) == [
        "competition.text.metric (text) imports competition.submit.history (submit)"]
    stray = package_sources()
    stray["competition.helpers"] = (False, "from .errors import ConfigError\n")
    assert layer_violations(import_graph(stray)[0]) == [
        "competition.helpers is in no layer: move it into a sub-package (or make it core)"]
    # A kind that imports the registry closes a loop through the registry's runtime import.
    loop = _planted("competition.candidates.lead", "from . import candidate_class")
    assert ["competition.candidates", "competition.candidates.lead"] in cycles(import_graph(loop)[0])


def test_optional_integrations_are_imported_by_their_seam_only():
    assert seam_violations(package_sources()) == []
    planted = _planted("competition.run.runner", "def cluster():\n    import ray")
    assert seam_violations(planted) == ["competition.run.runner imports ray (only competition.run.ray_cluster may)"]


def test_cli_choices_come_from_the_registries():
    """The CLI's fixed choices are the registries' names (one list each, in choices.py), and the
    stages' own tables hold exactly those names."""
    import click

    from competition import choices
    from competition.cli import main
    from competition.stages.search import SEARCHES

    def option(command, name):
        return next(p for p in command.params if p.name == name)

    commands = main.commands
    expected = {("score", "convention"): choices.CONVENTIONS, ("score", "multi_ref"): choices.MULTI_REF_RULES,
                ("run", "executor"): choices.EXECUTORS, ("history", "sort_key"): choices.HISTORY_SORT_KEYS,
                ("tune", "method"): choices.SEARCH_METHODS, ("augment", "method"): choices.AUGMENTATIONS}
    for (command, name), names in expected.items():
        param = option(commands[command], name)
        assert isinstance(param.type, click.Choice) and tuple(param.type.choices) == names, (command, name)
    assert tuple(SEARCHES) == choices.SEARCH_METHODS


# The only modules imported inside functions, each for the reason given: everything else (our own
# modules, the standard library, numpy, pandas) is imported at the top, where a reader looks.
LAZY_IMPORTS = {
    "torch": "2-4 s to import; only model candidates, export and GPU checks need it",
    "transformers": "imports torch; model candidates only",
    "peft": "imports torch; LoRA candidates only",
    "trl": "imports torch and transformers; qlora training only",
    "bitsandbytes": "imports torch; 4-bit loading only",
    "accelerate": "imports torch; multi-process training only",
    "datasets": "imports pyarrow; training data only",
    "ray": "optional extra; --executor ray only",
    "optuna": "optional extra; tune --method tpe only",
    "mlflow": "optional extra; [tracking] only",
    "kaggle": "optional extra; [leaderboard] backend = \"kaggle\" only, in leaderboard.kaggle_api (the one seam)",
    "openai": "the api candidate and augment's endpoint only",
    "httpx2": "comes with openai; the endpoint client only",
    "kiwipiepy": "loads a model for seconds; the token cache answers most texts without it",
    "matplotlib": "plots only",
    "sklearn": "the near-duplicate search only",
    "scipy": "0.3 s to import; the near-duplicate search only",
}


def function_level_imports() -> list[str]:
    """'path:line module' for every import statement inside a function body."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom):
                    module = "." * node.level + (node.module or "")
                elif isinstance(node, ast.Import):
                    module = node.names[0].name
                else:
                    continue
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {module}")
    return sorted(set(found))


def test_functions_import_only_the_heavy_optional_dependencies():
    found = function_level_imports()
    assert any(entry.endswith(" torch") for entry in found)  # the walk sees function bodies
    misplaced = [entry for entry in found if entry.split()[1].split(".")[0] not in LAZY_IMPORTS]
    assert misplaced == []


def probes_of_own_modules(source: str) -> list[str]:
    """Calls in `source` that ask whether one of the package's own modules exists, or import one
    by a literal name (find_spec("competition.x"), import_module("competition.x"))."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            literal = node.args[0] if node.args and isinstance(node.args[0], ast.Constant) else None
            if name in ("find_spec", "import_module") and literal is not None and \
                    str(literal.value).startswith(("competition", ".")):
                found.append(f"{node.lineno} {name}({literal.value!r})")
    return found


def test_no_module_asks_whether_the_package_has_one_of_its_own_modules():
    """Every module ships with the package: a check for it is dead code, and an import by a literal
    name hides an edge from the import graph above."""
    assert probes_of_own_modules('import importlib.util\nif importlib.util.find_spec("competition.run.ensemble"): pass')
    found = [f"{path.relative_to(PACKAGE.parent)}:{probe}" for path in sorted(PACKAGE.rglob("*.py"))
             for probe in probes_of_own_modules(path.read_text(encoding="utf-8"))]
    assert found == []
