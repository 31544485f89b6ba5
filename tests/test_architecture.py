"""The shape of `mav_core`, checked on its source: no import cycles, small modules and functions, imports at
the top (in-function imports only for optional heavy third-party modules), no swallowed ImportErrors,
and no ComfyUI anywhere in the core."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "mav_core"
MAX_MODULE_LINES = 500
MAX_PARAMETERS = 8
# third-party modules that are optional or slow to import, imported where they are used
LAZY_THIRD_PARTY = {"av", "cv2", "diffusers", "PIL", "kornia", "tqdm", "torch.distributed.run", "scipy"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imported(name: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Core modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = _package_of(name, path).split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("mav_core"):
        return []
    found = [target] if target in MODULES else []
    found += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found


def _top_level_imports(tree: ast.Module):
    """Import statements run when the module is imported (module level, incl. inside if/try at top level)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in _top_level_imports(tree):
            deps.update(_imported(name, path, node))
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        for dep in list(deps):
            parts = dep.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in MODULES)
        deps.discard(name)
        if path.name == "__init__.py":   # a package's own submodules are its children, not a cycle back
            deps = {d for d in deps}
        graph[name] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m.startswith(n + ".") and n in MODULES and MODULES[n].name == "__init__.py":
                continue   # a package importing its own submodules
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines (at most {MAX_MODULE_LINES})"


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameter_count(fn: ast.FunctionDef) -> int:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def test_functions_take_few_parameters():
    long = []
    for name, path in MODULES.items():
        for fn in _functions(ast.parse(path.read_text())):
            n = _parameter_count(fn)
            if n > MAX_PARAMETERS:
                long.append(f"{name}.{fn.name}: {n}")
    assert not long, f"functions with more than {MAX_PARAMETERS} parameters (group them in an options dataclass): {long}"


def test_imports_at_the_top():
    """In-function imports only of optional heavy third-party modules; never of the core itself."""
    late = []
    for name, path in MODULES.items():
        for fn in _functions(ast.parse(path.read_text())):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    mods = ["." * node.level + (node.module or "")]
                else:
                    continue
                for m in mods:
                    if m.startswith(".") or m.split(".")[0] == "mav_core" or (
                            m not in LAZY_THIRD_PARTY and m.split(".")[0] not in LAZY_THIRD_PARTY):
                        late.append(f"{name}.{fn.name}: import {m}")
    assert not late, f"in-function imports: {late}"


def test_no_swallowed_import_errors_and_no_comfy():
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) \
                    and node.type.id in ("ImportError", "ModuleNotFoundError") \
                    and all(isinstance(s, ast.Pass) for s in node.body):
                bad.append(f"{name}: except {node.type.id}: pass")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [f"{name}: imports {m}" for m in mods
                        if m.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes")]
    assert not bad, bad
