"""The shape the design promises: layers that only import downwards, no import cycles, formats
that only their own adapter knows, and a registry that finds a new adapter by itself."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "wsideid"
# Lowest first: a module may import its own layer and the layers below it.
LAYERS = [
    ("core", ["errors", "model", "policy", "keyring", "catalog", "dates", "needles", "background",
              "sampling", "formats", "icc", "library_warnings", "buffers"]),
    ("images", ["images"]),
    ("containers", ["containers"]),
    ("adapters", ["adapters"]),
    ("verify", ["verify"]),
    ("pipeline", ["pipeline", "convert", "associated"]),
    ("batch", ["batch", "journal", "names"]),
    ("report", ["report"]),
    ("cli", ["cli", "__main__", "interrupt"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts == ["wsideid"]:
        return 0
    for rank, (_, prefixes) in enumerate(LAYERS):
        if parts[1] in prefixes:
            return rank
    return None


def imports_of(path: Path) -> set[str]:
    """Every wsideid module the file imports, at any depth of the file (lazy imports too)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If)
                  and getattr(n.test, "id", "") == "TYPE_CHECKING"]:
        block.body = []   # imports for type hints only: no dependency at run time
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("wsideid")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("wsideid"):
                continue
            for alias in node.names:   # `from . import checks` imports a submodule
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return found


def _exists(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_it():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert upward == []


def test_no_import_cycles():
    edges = {m: {t for t in ts if t != m and not m.startswith(t + ".")} for m, ts in graph().items()}
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in edges:
        if start not in done:
            visit(start, [start], done)
    assert cycles == []


def test_containers_know_no_policy_and_formats_stay_in_their_adapter():
    for path in (PACKAGE / "containers").rglob("*.py"):
        assert not {t for t in imports_of(path) if t.startswith(("wsideid.policy", "wsideid.catalog",
                                                                 "wsideid.adapters"))}, path
    adapter_classes = set()
    for path in (PACKAGE / "adapters").glob("*.py"):
        tree = ast.parse(path.read_text())
        adapter_classes |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "adapters":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                assert not names & adapter_classes, f"{path}: isinstance of a format class"


def test_start_up_imports_no_format_library():
    """`wsideid --version` loads neither numpy nor any format's reader."""
    code = ("import sys; sys.argv = ['wsideid', '--version']\n"
            "from wsideid.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'pydicom', 'lxml', 'openslide', 'tifffile', "
            "'imagecodecs', 'wsidicomizer') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "wsideid" in proc.stdout


def test_a_new_tiff_vendor_is_one_module(tmp_path):
    """The registry finds an adapter module it was never told about: adding a format is one
    module (and its catalog), nothing else."""
    module = PACKAGE / "adapters" / "zz_test_vendor.py"
    module.write_text(
        "from .tiff import TiffAdapter\n\n"
        "class TestVendor(TiffAdapter):\n"
        "    name = 'test-vendor'\n"
        "    order = 900\n"
        "    def claims(self, tiff):\n"
        "        return (tiff.ifds[0].text(270) or '').startswith('TESTVENDOR')\n\n"
        "ADAPTER = TestVendor()\n")
    try:
        import tifffile
        import numpy as np

        slide = tmp_path / "x.tif"
        tifffile.imwrite(slide, np.zeros((64, 64), np.uint8), description="TESTVENDOR slide",
                         software=False)
        code = ("from pathlib import Path\nfrom wsideid import adapters\n"
                f"print('FOUND', adapters.detect(Path({str(slide)!r})).name, "
                "[a.name for a in adapters.adapters()][-2:])")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert "FOUND test-vendor ['test-vendor', 'generic-tiff']" in proc.stdout, proc.stderr
    finally:
        module.unlink()
