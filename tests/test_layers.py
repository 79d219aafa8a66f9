"""The library's layers import one way only: read from the source (ast), so imports inside
functions count too. Every module of ``lora_tasks`` has a layer (:data:`LAYERS`, as in
docs/architecture.md); a module imports its own package or lower layers only, no two modules
import each other (directly or round a longer circle), and no module passes ~400 lines.

    factory ──► lora, models            (the create_* that join adapters and encoders)
    training ──► lora, models, data     (never Prefect)
    models ──► data                     (never lora)
    lora ──► (nothing of ours but lora_tasks.torch_bin, lora_tasks.diskspace, lora_tasks.native and the package root)
    ensemble ──► metrics, thresholds    (never MLX or our MLX modules)
    ensemble ──► features ──► task      (features: never MLX, the steps or the members)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lora_tasks"

# group -> module-name prefixes (a package, or one module)
GROUPS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_tasks.lora",),
    "models": ("lora_tasks.models",),
    "factory": ("lora_tasks.training.factory",),
    "training": ("lora_tasks.training",),
    "ensemble": ("lora_tasks.ensemble",),
    "data": ("lora_tasks.data",),
    "features": ("lora_tasks.features",),
}

# group -> (forbidden module-name prefixes, why)
FORBIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "lora": (("lora_tasks.models", *GROUPS["training"], *GROUPS["factory"], "lora_tasks.data"),
             "the adapter library adapts any model and knows no training"),
    "models": (("lora_tasks.lora", *GROUPS["factory"], *GROUPS["training"]),
               "encoders know nothing of adapters; lora_tasks.training.factory joins them"),
    "training": (("prefect", "prefect_dask", "lora_tasks.prefect", "lora_tasks.steps"),
                 "the engine runs without Prefect"),
    "ensemble": (("mlx", "lora_tasks.models", "lora_tasks.lora", *GROUPS["training"]),
                 "blending works on prediction arrays, without MLX"),
    "data": (("lora_tasks.models", "lora_tasks.lora.adapter", "lora_tasks.lora.layers", *GROUPS["training"],
              *GROUPS["factory"], "mlx"), "the data layer runs without MLX"),
    "features": (("mlx", "lora_tasks.models", "lora_tasks.lora", *GROUPS["training"], *GROUPS["ensemble"],
                  *GROUPS["data"], "lora_tasks.steps", "lora_tasks.prefect", "prefect"),
                 "features are found from the columns alone and built before the members, without MLX"),
}


#: Layer of every package and root module, bottom (0) to top; a module imports only its own
#: package and lower layers. (docs/architecture.md has the same table, one line per package.)
LAYERS: dict[str, int] = {
    **dict.fromkeys(("lora_tasks", "lora_tasks.task", "lora_tasks.hashing", "lora_tasks.backend", "lora_tasks.heap",
                     "lora_tasks.diskspace", "lora_tasks.progress", "lora_tasks.lifecycle", "lora_tasks.torch_bin", "lora_tasks.plots"), 0),
    **dict.fromkeys(("lora_tasks.hub", "lora_tasks.metrics", "lora_tasks.native", "lora_tasks.features"), 1),
    **dict.fromkeys(("lora_tasks.lora", "lora_tasks.ensemble", "lora_tasks.testing"), 2),
    "lora_tasks.data": 3,
    **dict.fromkeys(("lora_tasks.models", "lora_tasks.kaggle"), 4),
    "lora_tasks.training": 5,
    "lora_tasks.budget": 6,
    "lora_tasks.options": 7,
    "lora_tasks.steps": 8,
    "lora_tasks.prefect": 9,
    "lora_tasks.cli": 10,
}
#: The ceiling of a module's length (the norm is ~300): one module, one job.
MAX_MODULE_LINES = 420
#: Modules still over the ceiling, each with its length today (it may only shrink) and why it waits.
OVER_THE_CEILING: dict[str, tuple[int, str]] = {
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.parent / Path(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, relative imports resolved
    (``name``: the module's dotted name, by default from its place under lora_tasks/)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if _is_module(sub) else module)
    return found


def _group(module: str) -> str | None:
    for group, prefixes in GROUPS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return group
    return None


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "testing" not in p.parts}
ALL_MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> tuple[str, int] | None:
    """``(package or root module, layer)`` of a ``lora_tasks`` module (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "lora_tasks":
        return None
    unit = ".".join(parts[:2])
    return (unit, LAYERS[unit]) if unit in LAYERS else (unit, -1)


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m)[0] for m in ALL_MODULES if layer_of(m)[1] < 0})
    assert not missing, f"give these a layer in LAYERS (and a line in docs/architecture.md): {missing}"


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    bad = []
    for module, path in ALL_MODULES.items():
        unit, layer = layer_of(module)
        for target in sorted(imports_of(path)):
            found = layer_of(target)
            if found is None or found[0] == unit or module == "lora_tasks":
                continue
            if found[1] >= layer:
                bad.append(f"{module} (layer {layer}) imports {target} (layer {found[1]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_circle_between_modules():
    """Imports inside functions count: a lazy import that closes a circle is still a circle."""
    graph = {m: {t for t in imports_of(p) if t in ALL_MODULES and t != m} for m, p in ALL_MODULES.items()}
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen and nxt > start:  # each circle once, from its smallest module
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_is_over_the_ceiling():
    lengths = {m: len(p.read_text().splitlines()) for m, p in ALL_MODULES.items()}
    long = {m: n for m, n in lengths.items() if n > MAX_MODULE_LINES and m not in OVER_THE_CEILING}
    assert not long, f"split these modules (one job each, ~300 lines, {MAX_MODULE_LINES} at most): {long}"
    grown = {m: (lengths.get(m), n) for m, (n, _) in OVER_THE_CEILING.items() if lengths.get(m, 0) > n}
    assert not grown, f"modules waiting for a split grew (now, allowed): {grown}"
    done = [m for m in OVER_THE_CEILING if lengths.get(m, 0) <= MAX_MODULE_LINES]
    assert not done, f"{done} fit the ceiling now: drop them from OVER_THE_CEILING"


def test_the_groups_cover_real_modules():
    for group, prefixes in GROUPS.items():
        assert any(_group(m) == group for m in MODULES), f"no module in group {group} ({prefixes})"


@pytest.mark.parametrize("group", sorted(FORBIDDEN))
def test_imports_go_the_allowed_direction(group):
    forbidden, why = FORBIDDEN[group]
    bad = []
    for module, path in MODULES.items():
        if _group(module) != group:
            continue
        for target in sorted(imports_of(path)):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} imports {target}")
    assert not bad, f"{group}: {why}:\n" + "\n".join(bad)


def test_no_cycle_between_the_groups():
    edges: dict[str, set[str]] = {g: set() for g in GROUPS}
    for module, path in MODULES.items():
        src = _group(module)
        if src is None:
            continue
        for target in imports_of(path):
            dst = _group(target)
            if dst is not None and dst != src:
                edges[src].add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if reaches(b, a, {b})]
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """A function-level import (the old lora/multi.py hid models that way) and a relative one both count."""
    fake = tmp_path / "fake.py"
    fake.write_text("from .config import LoRAConfig\n\n\ndef f():\n    from ..models import factory\n"
                    "    import mlx.core as mx\n    return factory, mx, LoRAConfig\n")
    found = imports_of(fake, "lora_tasks.lora.fake")
    assert found == {"lora_tasks.lora.config", "lora_tasks.models.factory", "mlx.core"}


def test_lora_config_imports_without_mlx():
    code = (
        "import sys\n"
        "sys.modules['mlx'] = None  # any 'import mlx...' now fails\n"
        "from lora_tasks.lora.config import PRESETS, LoRAConfig, get_preset\n"
        "from lora_tasks.data.autoconfig import PRESETS as AUTO\n"
        "assert AUTO is PRESETS\n"
        "print(get_preset('balanced').r)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8"


def _first_line_importing(tree: ast.Module, prefix: str) -> int | None:
    """The first top-level statement importing ``prefix`` (or a submodule), by line."""
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n == prefix or n.startswith(prefix + ".") for n in names):
            return node.lineno
    return None


MLX_SCRIPTS = [p for p in sorted((ROOT.parent / "benchmarks").glob("*.py"))
               if _first_line_importing(ast.parse(p.read_text()), "mlx") is not None]


@pytest.mark.parametrize("script", MLX_SCRIPTS, ids=lambda p: p.name)
def test_benchmarks_import_lora_tasks_before_mlx(script):
    """A script run directly must import lora_tasks before mlx, or MLX keeps its slow reference BLAS and every
    number it measures is wrong; the linter's import sorting once moved mlx first (an ``isort: split`` keeps it)."""
    tree = ast.parse(script.read_text())
    mlx_line = _first_line_importing(tree, "mlx")
    ours = _first_line_importing(tree, "lora_tasks")
    assert ours is not None and ours < mlx_line, f"{script.name}: `import lora_tasks` must come before mlx (line {mlx_line})"
