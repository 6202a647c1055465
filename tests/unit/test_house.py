"""The rules of the house that the code's own imports can show (docs/design.rst).

Read from the source, without importing it: every ``from .x import y`` (at the top, under
``TYPE_CHECKING`` or inside a function alike) is an arrow between two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trio_producer

PACKAGE = Path(trio_producer.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def arrows() -> dict[str, set[str]]:
    """Each module of the package, and the package modules it imports (relative and
    absolute imports alike)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    result: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):  # import trio_producer._x
                targets.update(alias.name for alias in node.names)
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:  # from trio_producer._x import y, from trio_producer import _x
                if node.module is not None and node.module.startswith("trio_producer"):
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
                continue
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            if node.module is not None:
                targets.add(".".join([*base, node.module]))
            else:  # from . import x: the submodule x
                targets.update(".".join([*base, alias.name]) for alias in node.names)
        result[name] = {t for t in targets if t in modules and t != name}
    return result


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
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


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_runtime_or_type_only() -> None:
    assert circles(arrows()) == []


def test_production_code_imports_nothing_from_testing() -> None:
    graph = arrows()
    offenders = sorted(
        (name, target)
        for name, targets in graph.items()
        if not name.startswith("trio_producer.testing")
        for target in targets
        if target.startswith("trio_producer.testing")
    )
    assert offenders == []


def _runtime_imports(tree: ast.Module) -> list[str]:
    """The modules a file imports at run time: not those under ``if TYPE_CHECKING:``."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def test_only_the_boundaries_import_confluent_kafka_at_run_time() -> None:
    # _client.py for the producer, _admin.py for the admin and consumer helpers, and the
    # adapters to confluent's own serializers (serialization.py, schema_registry.py).
    # Type-only imports (TopicPartition in send_offsets' signature) do not count.
    allowed = {"_client.py", "_admin.py", "serialization.py", "schema_registry.py"}
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(
            name == "confluent_kafka" or name.startswith("confluent_kafka.")
            for name in _runtime_imports(ast.parse(path.read_text()))
        )
    }
    assert importers <= allowed, sorted(importers - allowed)
    assert "_client.py" in importers  # (the check sees imports at all)


#: The parts an object is wired with when it is built (constructor arguments): the worker's
#: source (``BatchChannel``), the delivery task's hooks and run callbacks
#: (``DeliveryTracker``). Only the object itself may assign them (docs/design.rst).
WIRED = frozenset({"source", "run_reports", "after_reports", "before_produce"})


def wirings_after_construction(root: Path = PACKAGE) -> list[str]:
    """Every assignment of a :data:`WIRED` attribute on another object than ``self`` in the
    package at ``root``, as ``module:line: target``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for sub in ast.walk(target):  # (also inside tuple targets)
                    if not isinstance(sub, ast.Attribute) or sub.attr not in WIRED:
                        continue
                    if isinstance(sub.value, ast.Name) and sub.value.id == "self":
                        continue
                    where = path.relative_to(root.parent).as_posix()
                    found.append(f"{where}:{node.lineno}: {ast.unparse(sub)}")
    return found


def test_objects_are_wired_when_constructed_not_after() -> None:
    # open_producer builds each object complete: the spool's parts are constructor
    # arguments of the channel and the delivery task, never set on them afterwards.
    assert wirings_after_construction() == []


def test_the_wiring_check_sees_an_assignment_after_construction(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "channel.source = s\n"
        "self.source = s\n"
        "a, tracker.run_reports = 1, 2\n"
        "parts.tracker.after_reports: object = None\n"
        "channel.sources = s\n"
    )
    assert wirings_after_construction(tmp_path / "pkg") == [
        "pkg/m.py:1: channel.source",
        "pkg/m.py:3: tracker.run_reports",
        "pkg/m.py:4: parts.tracker.after_reports",
    ]
