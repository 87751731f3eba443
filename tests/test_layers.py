"""The package's layers: imports point one way, the front end never loads torch, modules stay small.

Dependencies point one way: `files, recipes <- language <- networks <- runs`, `language <- tools`,
`scales` (colour scales) <- `runs` and `tools`, `records` (what run directories record: plain
Python that imports nothing of ours) <- `networks` (a method names what it records), `runs` and
`tools`, and `commands` may use everything (plan of #12; README, "Layout"). The graph is read
from the source with `ast`, lazy imports inside functions included, so a cycle cannot hide
behind one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "attdarts"

# layer -> the layers it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "files": {"files"},
    "recipes": {"recipes"},
    "scales": {"scales"},
    "records": {"records"},
    "language": {"language", "files", "recipes"},
    "networks": {"networks", "language", "files", "recipes", "records"},
    "runs": {"runs", "networks", "language", "files", "recipes", "scales", "records"},
    "tools": {"tools", "language", "files", "recipes", "scales", "records"},
    # api: its heavy functions import networks / runs inside the function, so `import
    # attdarts.api` stays torch-free (TORCH_FREE below checks it)
    "api": {"api", "tools", "runs", "networks", "language", "files", "recipes", "scales", "records"},
    "cli": {"cli", "api", "plugins", "language", "files", "recipes"},
    "commands": {"commands", "cli", "api", "tools", "runs", "networks", "language", "files",
                 "recipes", "scales", "records"},
    # plug-ins register names in the torch-free tables of the front end
    "plugins": {"plugins", "language"},
    # lazy attributes: create_network, load_network, search, train, ... (plug-ins loaded first)
    "__init__": {"api", "plugins"},
}
# files.read_source reports unreadable input as a located DslError, the one error type of the
# front end; language.errors imports nothing of ours, so this edge cannot close a cycle
EXCEPTIONS = {("attdarts.files", "attdarts.language.errors")}

TORCH_FREE = ["attdarts.api", "attdarts.cli", "attdarts.files", "attdarts.plugins",
              "attdarts.recipes", "attdarts.scales",
              "attdarts.records"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ours that `path` imports anywhere (`from a.b import c` counts a.b.c when c is a
    module, else a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            assert not (isinstance(node, ast.ImportFrom) and node.level), \
                f"{path}: relative import; use absolute imports"
            continue
        found.update(name for name in names if name == "attdarts" or name.startswith("attdarts."))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_imports_point_one_way():
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in _graph().items() for target in targets
                   if _layer(target) not in ALLOWED[_layer(module)]
                   and (module, target) not in EXCEPTIONS)
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            # a package's __init__ is imported with any of its modules: not a dependency here
            if module.startswith(target + "."):
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_front_end_never_imports_torch():
    modules = TORCH_FREE + sorted(name for name in _modules()
                                  if _layer(name) in ("language", "tools") and "." in name)
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _too_long() -> list[str]:
    found = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}.{node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_small():
    too_long = _too_long()
    assert not too_long, "split these:\n" + "\n".join(too_long)
