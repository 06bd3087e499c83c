"""The import structure: no package reaches into another's private names, the packages form no cycle, and
``import modscope`` stays free of torch (clustering worker processes import it)."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import modscope

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_of(path: Path) -> str:
    """Dotted name of a file under src/ (``modscope.masks.train``) or tests/ (``tests.test_x``)."""
    base = SRC if path.is_relative_to(SRC) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package(module: str) -> str:
    """The package a module belongs to: ``modscope.<first part>`` (``modscope.masks`` for
    ``modscope.masks.train``, ``modscope.atomic`` for that top-level module), ``modscope`` for the root,
    ``tests`` for the tests."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "modscope" else parts[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every modscope import in ``path`` (function-level ones included):
    ``name`` is the attribute taken from ``module`` (``from m import name``, or ``m.name`` where a
    module was bound by ``import``), ``None`` for a plain ``import module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_of(path)
    is_pkg = path.name == "__init__.py"
    bound: dict[str, str] = {}  # local name -> modscope module it refers to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "modscope":
                    continue
                found.append((node.lineno, alias.name, None))
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound["modscope"] = "modscope"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + (1 if is_pkg else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "modscope":
                continue
            for alias in node.names:
                if _is_module(f"{source}.{alias.name}"):
                    found.append((node.lineno, f"{source}.{alias.name}", None))
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
                else:
                    found.append((node.lineno, source, alias.name))
    for node in ast.walk(tree):  # module.attribute chains on the bound names: modscope.masks.train._x
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "ctx", None), ast.Store):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound:
                module = bound[inner.id]
                for attr in reversed(chain):
                    if _is_module(f"{module}.{attr}"):
                        module = f"{module}.{attr}"
                    else:
                        found.append((node.lineno, module, attr))
                        break
    return found


FILES = sorted([*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py")])


def private_imports() -> list[str]:
    """Every import of a private (underscore) module or name from another package, as ``file:line: what``."""
    out = set()
    for path in FILES:
        here = package(_module_of(path))
        for line, module, name in imports(path):
            if package(module) == here:
                continue
            parts = module.split(".") + ([name] if name else [])
            if any(_private(p) for p in parts):
                what = f"{module}.{name}" if name else module
                out.add(f"{path.relative_to(ROOT)}:{line}: {what}")
    return sorted(out)


def test_no_package_imports_another_packages_private_names():
    assert private_imports() == []


def test_the_checker_sees_private_imports(tmp_path, monkeypatch):
    code = (
        "import modscope.masks.train as t\n"
        "from modscope.training import _layers\n"
        "from modscope.masks.train import _step, train_masks\n"
        "def f():\n    return t._Batches, t.train_masks\n"
    )
    fake = ROOT / "tests" / "_probe_for_test_imports.py"
    monkeypatch.setattr(sys.modules[__name__], "FILES", [fake])
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: code)
    found = private_imports()
    assert found == [
        "tests/_probe_for_test_imports.py:2: modscope.training._layers",
        "tests/_probe_for_test_imports.py:3: modscope.masks.train._step",
        "tests/_probe_for_test_imports.py:5: modscope.masks.train._Batches",
    ]
    assert [line for line, module, name in imports(fake) if name == "train_masks"] == [3, 5]


def package_graph() -> dict[str, set[str]]:
    """``package -> packages it imports`` over src/modscope (the root ``modscope`` package included)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        here = package(_module_of(path))
        graph[here]
        for _, module, _ in imports(path):
            if package(module) != here:
                graph[here].add(package(module))
    return dict(graph)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one package (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert {"modscope.graph", "modscope.cluster", "modscope.lesion", "modscope.masks"} <= set(graph)
    assert cycles(graph) == []
    # the two lenses stay apart, and the structural core never reaches up to its users
    assert "modscope.masks" not in graph["modscope.cluster"] | graph["modscope.graph"]
    assert "modscope.lesion" not in graph["modscope.cluster"] | graph["modscope.graph"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("names", ["", "WeightGraph, clusterability, spectral_partition"])
def test_import_modscope_is_free_of_torch(names):
    code = f"import sys, modscope\n{'from modscope import ' + names if names else ''}\n"
    code += "assert 'torch' not in sys.modules, 'import modscope imported torch'\n"
    src = str(Path(modscope.__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": src}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
