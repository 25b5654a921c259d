"""The layers of ``service/``, read from the source: which package may import which (never one
above it), no import circles, the pure packages free of Sanic, python-socketio and Redis, and
imports that name a package rather than a file inside it.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import
upward is still a circle in the design.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"

#: bottom first: a unit may import itself and the units on lines above its own, never one
#: below. A unit is a package of service/ or one of its top-level modules.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("service",),    # service/__init__.py: __version__ only
    ("errors",),     # every error and its code
    ("telemetry",),  # logs, metrics, supervised loops: every layer may count and log
    ("outbound",),   # outbound HTTP, a bounded pool per purpose (JWKS, webhooks)
    ("config",),     # the settings and their checks
    ("transport",),  # websocket framing, Engine.IO, the Socket.IO server class, the manager
    ("protocol",),   # one parser per event (the user-id rule included)
    ("auth",),       # tokens in, identities out; credentials handed out (dev tokens, TURN)
    ("policy",),     # limits and the guard
    ("delivery",),   # presence and delivery interfaces, in memory
    ("calls",),      # call rules, the relay path, call stores, the webhook
    ("cluster",),    # the Redis implementations of delivery and the call store
    ("signaling",),  # the Socket.IO handlers and the session registry
    ("http",),       # routes, specs, the demo page
    ("factory",),    # create_app: wires every layer
    ("app",),        # app = create_app(Settings.from_env()), for `sanic service.app`
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
#: the packages whose import loads no web framework, Socket.IO or Redis
PURE = ("errors", "telemetry", "outbound", "config", "protocol", "auth", "policy", "delivery",
        "calls")
FRAMEWORKS = ("sanic", "socketio", "engineio", "redis")


@dataclass(frozen=True)
class Import:
    source: str  # dotted module doing the import
    target: str  # dotted module (or package) imported
    names: tuple[str, ...]  # for ``from x import a, b``
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "service"


def imports_in(path: Path) -> Iterator[Import]:
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield Import(source, target, tuple(a.name for a in node.names), node.lineno)


def service_files() -> list[Path]:
    return sorted(SERVICE.rglob("*.py"))


def modules() -> set[str]:
    return {module_name(p) for p in service_files()}


def own_imports() -> list[Import]:
    """Every import in service/ of a service module, one per module actually imported
    (``from service.pkg import mod`` counts as an import of the module ``mod``)."""
    known = modules()
    found: list[Import] = []
    for path in service_files():
        for imp in imports_in(path):
            if imp.target.split(".")[0] != "service":
                continue
            submodules = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in known]
            if submodules:
                found.extend(Import(imp.source, m, (), imp.line) for m in submodules)
            if len(submodules) < len(imp.names) or not imp.names:
                found.append(imp)
    return found


def test_every_module_is_in_a_layer() -> None:
    """service/ holds the units of the stack and nothing beside them: a new module finds
    its layer here first (and today's packages all exist)."""
    units = {unit_of(m) for m in modules()}
    assert units - RANK.keys() == set(), "modules outside every layer"
    assert RANK.keys() - units == set(), "layers with no module"
    packages = {p.parent.name for p in SERVICE.glob("*/__init__.py")}
    modules_at_top = {p.stem for p in SERVICE.glob("*.py")} - {"__init__"}
    assert modules_at_top == {"errors", "outbound", "protocol", "factory", "app"}
    assert packages == RANK.keys() - modules_at_top - {"service"}


def test_no_import_goes_up_the_stack() -> None:
    """A unit imports only itself and the units below it (see ``LAYERS``)."""
    upward = sorted(
        f"{i.source} (line {i.line}) imports {i.target}"
        for i in own_imports()
        if RANK[unit_of(i.target)] > RANK[unit_of(i.source)]
    )
    assert upward == []


def test_no_import_circles() -> None:
    """No module imports, directly or not, a module that imports it (the settings and their
    environment reader used to import each other); a module never imports its own package's
    ``__init__`` (which imports it)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in own_imports():
        if imp.target in graph:
            graph[imp.source].add(imp.target)
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_imports_name_the_package() -> None:
    """From outside a package, service code, scripts and benchmarks import what its
    ``__init__`` re-exports (``from service.calls import Calls``), never a module inside it
    (``service.calls.coordinator``, ``from service.calls import coordinator``); the tests may
    reach inside to test internals. A package's command line (``cli.py``) is run by its
    script, not used, and is not re-exported."""
    packages = {p.parent.name for p in SERVICE.glob("*/__init__.py")}
    known = modules()
    files = service_files() + sorted((ROOT / "scripts").glob("*.py")) + sorted(
        (ROOT / "benchmarks").glob("*.py"))
    reaching_in: list[str] = []
    for path in files:
        inside = module_name(path).split(".")[:2] if path.is_relative_to(SERVICE) else []
        for imp in imports_in(path):
            parts = imp.target.split(".")
            if parts[0] != "service" or len(parts) < 2 or parts[1] not in packages:
                continue
            if inside == parts[:2]:
                continue
            targets = [imp.target] if len(parts) > 2 else [
                f"{imp.target}.{name}" for name in imp.names if f"{imp.target}.{name}" in known]
            reaching_in.extend(f"{path.relative_to(ROOT)}:{imp.line} {target}"
                               for target in targets if not target.endswith(".cli"))
    assert reaching_in == []


def test_inside_a_package_siblings_are_imported_by_module() -> None:
    """A module of a package imports its siblings by their module path, never through the
    package's ``__init__`` (which imports them: a circle waiting for an import order)."""
    through_init = [
        f"{i.source}:{i.line}"
        for i in own_imports()
        if i.target.count(".") == 1 and i.target != i.source
        and i.source.startswith(i.target + ".")
    ]
    assert through_init == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_pure_packages_import_no_framework(framework: str) -> None:
    """The pure packages import neither Sanic, python-socketio, python-engineio nor Redis,
    in their source..."""
    pure_files = [p for p in service_files() if unit_of(module_name(p)) in PURE]
    offenders = sorted(f"{module_name(p)}:{i.line}" for p in pure_files
                       for i in imports_in(p) if i.target.split(".")[0] == framework)
    assert pure_files and offenders == []


def test_pure_packages_load_no_framework() -> None:
    """... nor load one, through any import, in a fresh interpreter: they are usable and
    testable without a server."""
    code = (
        "import sys\n"
        + "".join(f"import service.{unit}\n" for unit in PURE)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == ""


def test_only_what_counts_loads_prometheus() -> None:
    """prometheus-client fixes its multiprocess mode when it is imported, and service.app
    sets ``PROMETHEUS_MULTIPROC_DIR`` first: the packages that do not count (settings,
    tokens, parsers, limits, delivery) do not load it, though they log."""
    code = (
        "import sys\n"
        + "".join(f"import service.{unit}\n"
                  for unit in ("errors", "config", "protocol", "auth", "policy", "delivery"))
        + "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_only_the_auth_package_imports_jwt() -> None:
    """``jwt`` is imported by service/auth/ and nowhere else in the service."""
    importers = sorted({unit_of(module_name(p)) for p in service_files()
                        for i in imports_in(p) if i.target.split(".")[0] == "jwt"})
    assert importers == ["auth"]


def test_only_the_cluster_package_imports_redis() -> None:
    """The handlers and the call path reach Redis only through the interfaces (``Presence``,
    ``Delivery``, ``CallStore``) that service/cluster/ implements. (python-socketio itself
    imports redis-py, so this is checked in the source.)"""
    importers = sorted({unit_of(module_name(p)) for p in service_files()
                        for i in imports_in(p) if i.target.split(".")[0] == "redis"})
    assert importers == ["cluster"]


def test_only_the_factory_knows_the_cluster() -> None:
    """Which implementation of delivery and the call store runs is decided in one place:
    nothing but the factory (and the cluster itself) imports service.cluster."""
    importers = sorted({unit_of(i.source) for i in own_imports()
                        if unit_of(i.target) == "cluster"} - {"cluster"})
    assert importers == ["factory"]
