"""The package's import structure: advent modules import each other at the top, and in no cycle."""
import ast

from advent import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "advent"


def module_name(path):
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parsed_modules():
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in PACKAGE.rglob("*.py")}


def advent_imports(tree, modules):
    """(imported advent module, import node) of every import statement in `tree`: for
    `from package import name`, the module package.name when there is one, else the package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        yield from ((name, node) for name in names if name in modules)


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_advent_modules():
    modules = parsed_modules()
    graph = {name: {target for target, _ in advent_imports(tree, modules)} - {name}
             for name, tree in modules.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_advent_modules_are_imported_at_module_top():
    modules = parsed_modules()
    late = {f"{name}.{function.name} imports {target}"
            for name, tree in modules.items() for function in ast.walk(tree)
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for target, _ in advent_imports(function, modules)}
    assert not late, sorted(late)


def test_utils_import_nothing_above_them():
    """advent.utils is the bottom layer: its modules import only each other (and the package root)."""
    modules = parsed_modules()
    upward = {f"{name} imports {target}" for name, tree in modules.items() if name.startswith("advent.utils.")
              for target, _ in advent_imports(tree, modules)
              if target != "advent" and not target.startswith("advent.utils")}
    assert not upward, sorted(upward)


def test_advent_modules_import_by_absolute_names_only():
    """So that the checks above see every import (advent_imports reads absolute names)."""
    relative = sorted(f"{name}, line {node.lineno}" for name, tree in parsed_modules().items()
                      for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0)
    assert not relative, relative
