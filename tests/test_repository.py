"""Repository invariants a clean-clone CI run relies on."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_command_ci_runs():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if "pytest" in line and not line.startswith("#"))
    assert command in (ROOT / "README.md").read_text().splitlines()


def test_core_package_imports_no_flower():
    """fp8fl/ must stay usable without Flower (flwr-datasets' partitioners are a separate library)."""
    flower_import = re.compile(r"^\s*(from|import)\s+flwr(\.|\s|$)", re.MULTILINE)
    for source in (ROOT / "fp8fl").rglob("*.py"):
        assert not flower_import.search(source.read_text()), source


# Layers, lowest first: a module may import its own layer and the layers below it, never above.
# The maths the methods use sits below ``fp8fl.methods``; what composes a run sits above it; the
# Flower apps above the core; the command-line tools, reports and benchmarks on top.
LAYERS = (
    ("fp8fl",),  # the package's own metadata (version)
    ("fp8fl.numerics",),
    ("fp8fl.models",),
    ("fp8fl.data",),
    ("fp8fl.federated",),
    ("fp8fl.methods",),
    ("fp8fl.run",),
    ("clients", "strategies"),
    ("experiments",),
)
PACKAGES = ("fp8fl", "clients", "strategies", "experiments")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every first-party module and the first-party modules it imports, at any depth of the
    file (in functions and under ``TYPE_CHECKING`` too: a lazy import is still a dependency)."""
    sources = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from package import module`` names the module; ``from module import name``
                # the module itself
                named = [f"{base}.{alias.name}" for alias in node.names]
                candidates = [n for n in named if n in sources] or [base]
            else:
                continue
            targets |= {c for c in candidates if c in sources and c != name}
        graph[name] = targets
    return graph


def _place(module: str) -> tuple[int, str]:
    """The deepest layer whose prefix names ``module``: its index and that prefix."""
    return max(
        (i, prefix)
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(f"{prefix}.")
    )


def _layer(module: str) -> int:
    return _place(module)[0]


def test_every_import_goes_down_the_layers():
    """No import from a lower layer to a higher one, and none between two packages of one layer
    (the ClientApp and the ServerApp know each other only through the core)."""
    graph = _imports()
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
        or (_layer(target) == _layer(module) and _place(target) != _place(module))
    ]
    assert wrong == []


def test_no_import_cycle_among_fp8fl_modules():
    """Tarjan's strongly connected components of the core's import graph are all single modules."""
    graph = {m: {t for t in ts if t.startswith("fp8fl")} for m, ts in _imports().items()}
    graph = {m: ts for m, ts in graph.items() if m.startswith("fp8fl")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_layer_check_sees_an_upward_import_and_a_cycle():
    """The checks above can fail: a lower layer importing a higher one is caught, and so is a
    two-module circle."""
    assert _layer("fp8fl.methods.registry") > _layer("fp8fl.federated.wire")
    assert _layer("fp8fl.run.config") > _layer("fp8fl.methods.fp8")
    assert _layer("experiments.cli.sweep") > _layer("strategies.app")
    graph = _imports()
    assert "fp8fl.federated.wire" in graph["fp8fl.methods.fp8"]  # found inside the package
    assert "fp8fl.data.dataset" in graph["fp8fl.data.tasks"]
