"""The package's layering, read from the source: no import circle, no import upwards.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``:
a lazy import still makes the lower module know the higher one. A new top-level module
or package must be placed in ``LAYERS`` deliberately.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "servomexd"

LAYERS: dict[str, int] = {
    # 0: no servomexd imports beyond each other
    "": 0,  # servomexd/__init__.py (__version__)
    "errors": 0,
    "redaction": 0,
    "backoff": 0,
    "notify": 0,
    "signals": 0,
    "startup_checks": 1,
    # 1: the records
    "model": 1,
    # 2: bytes <-> records, bytes in and out, rows
    "protocol": 2,
    "link": 2,
    "rows": 2,
    # 3: the parts that use them
    "acquisition": 3,
    "sinks": 3,
    "spool": 3,
    "spool_codec": 3,  # the batch payload format (spool.py and its quarantine use it)
    "spool_sql": 3,  # the write transaction and batch insert both spool writers share
    "spool_quarantine": 3,  # the quarantine table inside the spool file
    "metrics": 3,
    "looplag": 4,
    "decode": 3,
    "simulator": 3,
    "logs": 3,
    "portcheck": 3,
    # 4: settings and delivery, which know the parts
    "config": 4,
    "destination": 4,
    "writer": 4,
    "delivery": 4,
    "http": 4,
    "http_access": 4,
    "http_wire": 4,
    "status": 4,
    "webconfig": 4,
    "tls_check": 5,
    "check": 6,
    "spool_cli": 6,
    # 5: the wiring
    "daemon": 5,
    "reload": 5,
    "reloader": 5,  # applies a reload plan to the running daemon (daemon.py passes itself)
    "demo": 6,
    "cli": 7,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The servomexd modules ``name`` imports (a submodule when it is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "servomexd":
                continue
            while target not in known:
                target = target.rpartition(".")[0]
            found.add(target)
    # ``from servomexd.sinks import base`` names the package too; keep only the deepest.
    return {t for t in found if not any(o.startswith(t + ".") for o in found)} - {name}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    assert top in LAYERS, f"servomexd.{top} is not placed in LAYERS (tests/test_layering.py)"
    return LAYERS[top]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read() -> None:
    edges = graph()
    assert "servomexd.model" in edges["servomexd.protocol.continuous"]
    assert "servomexd.acquisition.modbus" in edges["servomexd.acquisition.auto"]
    assert "servomexd.protocol.modbus" in edges["servomexd.acquisition.modbus"]  # "import as"


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_acquisition_reads_structural_settings_not_config() -> None:
    edges = graph()
    offenders = [
        name
        for name, targets in edges.items()
        if name.startswith("servomexd.acquisition") and "servomexd.config" in targets
    ]
    assert offenders == []
