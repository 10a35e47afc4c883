"""The house rules of docs/ARCHITECTURE.md, checked on the source: each layer imports only the layers below it,
no module imports another in a circle, the kernels know nothing of the package, and MPI lives in the
exchange (and in calibrate, which measures MPI itself)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "nptp_mpi"
KERNELS = ROOT / "kernels"  # installed as nptp_mpi.kernels (setup.cfg's package_dir)
# layer -> the layers it may import (function-level imports count too); only these three call kernels directly:
# nodes meet kernels in runtime.ops, and tools/cli time or warm them
ALLOWED = {
    "kernels": set(),
    "errors": set(),
    "io": {"errors"},
    "model": {"errors", "io"},
    "plan": {"errors", "io", "model"},
    "strategies": {"errors", "io", "model", "plan"},
    "runtime": {"kernels", "errors", "io", "model", "plan"},
    "api": {"errors", "io", "model", "plan", "strategies", "runtime"},
    "tools": {"kernels", "errors", "io", "model", "plan", "strategies", "runtime"},
    "cli": {"kernels", "errors", "io", "model", "plan", "strategies", "runtime", "tools", "api"},
}
MPI_MODULES = {"nptp_mpi.runtime.exchange", "nptp_mpi.tools.calibrate"}


def module_name(path: Path) -> str:
    """The installed name: nptp_mpi.x.y for nptp_mpi/x/y.py and nptp_mpi.kernels.y for kernels/y.py."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = ("nptp_mpi", *parts) if parts[0] == "kernels" else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            if node.module:  # `from . import module` names the module, not its package
                out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "nptp_mpi" and len(parts) > 1 and parts[1] in ALLOWED else None


def sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *KERNELS.glob("*.py")])


def test_every_module_belongs_to_a_layer() -> None:
    stray = [module_name(p) for p in sources()
             if layer(module_name(p)) is None and module_name(p) not in ("nptp_mpi", "nptp_mpi.__main__")]
    assert not stray, f"modules outside the layers of docs/ARCHITECTURE.md: {stray}"


def test_layers_import_only_the_layers_below() -> None:
    bad = []
    for path in sources():
        me = layer(module_name(path))
        for mod in imports(path):
            other = layer(mod)
            if me and other and other != me and other not in ALLOWED[me]:
                bad.append(f"{module_name(path)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_import_circle() -> None:
    graph = {module_name(p): {m for m in imports(p, top_level_only=True) if m.startswith("nptp_mpi.")}
             for p in sources()}
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(d):], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_kernels_know_nothing_of_the_package_and_mpi_stays_in_the_exchange() -> None:
    for path in sorted(KERNELS.glob("*.py")):
        assert all(m.startswith("nptp_mpi.kernels") or not m.startswith(("nptp_mpi", "mpi4py", "kernels"))
                   for m in imports(path)), path
    for path in sources():
        name, mods = module_name(path), imports(path)
        if any(m.startswith("mpi4py") for m in mods):
            assert name in MPI_MODULES, f"{name} imports mpi4py; only the exchange may"
        assert not any(m.split(".")[0] == "kernels" for m in mods), f"{name}: import nptp_mpi.kernels, as installed"
