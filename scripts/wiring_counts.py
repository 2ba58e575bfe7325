"""Count what issue 20 measures in the ``ouro`` package: ``getattr``/``hasattr`` calls in the wiring files,
imports inside functions (all, and of ouro's own modules), module cycles and cycles between packages.

Usage: ``python scripts/wiring_counts.py [ROOT]`` (ROOT: a checkout, default the current directory). Imports
under ``if TYPE_CHECKING:`` are left out (they never run). ``--list`` prints every counted site.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

#: The files (and folders) whose getattr/hasattr calls the issue counts.
WIRING = (
    "module.py",
    "stages.py",
    "run_dir.py",
    "trainer_cli.py",
    "resume.py",
    "preflight.py",
    "data",
    "callbacks",
)


def module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST, current: str, is_package: bool, modules: set[str]):
    """Yield (import node, inside a function, imported ouro modules) for every runtime import."""

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            anchor = current.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        found = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append(sub if sub in modules else base)
        return found

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for grandchild in child.orelse:
                    yield from walk(grandchild, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                own = [t for t in targets(child) if t == "ouro" or t.startswith("ouro.")]
                yield child, in_function, own
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)

    yield from walk(tree, False)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """``ouro.data.pretrain`` -> ``ouro.data``; a top-level module is its own package (``ouro.cli``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def main(root: Path, listing: bool) -> None:
    package_root = root / "ouro"
    files = sorted(package_root.rglob("*.py"))
    modules = {module_name(f, package_root) for f in files}
    graph: dict[str, set[str]] = {}
    handshakes, function_imports, own_function_imports = [], [], []
    for path in files:
        name = module_name(path, package_root)
        tree = ast.parse(path.read_text(), filename=str(path))
        relative = path.relative_to(package_root).as_posix()
        if any(relative == w or relative.startswith(w + "/") for w in WIRING):
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    if node.func.id in ("getattr", "hasattr"):
                        handshakes.append(f"{relative}:{node.lineno} {ast.unparse(node)[:90]}")
        for node, in_function, own in imports(tree, name, path.name == "__init__.py", modules):
            site = f"{relative}:{node.lineno} {ast.unparse(node)[:90]}"
            if in_function:
                function_imports.append(site)
                if own:
                    own_function_imports.append(site)
            for target in own:
                if target in modules and target != name:
                    graph.setdefault(name, set()).add(target)
    module_cycles = cycles(graph)
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        for target in targets:
            if package_of(source) != package_of(target) and target != "ouro":
                packages.setdefault(package_of(source), set()).add(package_of(target))
    package_cycles = cycles(packages)
    print(f"getattr/hasattr calls in {', '.join(WIRING)}: {len(handshakes)}")
    print(
        f"imports inside functions: {len(function_imports)} (of ouro's own modules: {len(own_function_imports)})"
    )
    print(f"module cycles: {len(module_cycles)}")
    for cycle in module_cycles:
        print("  " + " <-> ".join(cycle))
    print(f"package knots (cycles between ouro's packages and top-level modules): {len(package_cycles)}")
    for cycle in package_cycles:
        print(f"  {len(cycle)}: " + ", ".join(cycle))
    if listing:
        for title, sites in (
            ("getattr/hasattr", handshakes),
            ("imports of ouro's own modules inside functions", own_function_imports),
            ("other imports inside functions", sorted(set(function_imports) - set(own_function_imports))),
        ):
            print(f"\n{title}:")
            for site in sites:
                print("  " + site)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--list"]
    main(Path(arguments[0]) if arguments else Path("."), "--list" in sys.argv)
