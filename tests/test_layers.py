"""The package's import graph, read from the source (AST): no import cycles, counting imports inside
functions too (they must not be a way around a cycle), and nobody imports another module's
_private name."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "competition"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> internal modules it imports anywhere in its body, private names imported)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                if target in modules and target != name:
                    graph[name].add(target)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{name} imports {base}.{alias.name}")
    return graph, private


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
    assert len(graph) > 30 and graph["competition.runner"]  # the walk found the package
    assert cycles(graph) == []
    assert private == []


def test_cli_choices_come_from_the_registries():
    """The CLI's fixed choices are the registries' names (one list each, in choices.py), and the
    stages' own tables hold exactly those names."""
    import click

    from competition import choices
    from competition.cli import main
    from competition.search import SEARCHES

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
    assert probes_of_own_modules('import importlib.util\nif importlib.util.find_spec("competition.ensemble"): pass')
    found = [f"{path.relative_to(PACKAGE.parent)}:{probe}" for path in sorted(PACKAGE.rglob("*.py"))
             for probe in probes_of_own_modules(path.read_text(encoding="utf-8"))]
    assert found == []
