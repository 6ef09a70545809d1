"""The install a user makes, and errors that are not the input's fault.

The wheel is built from this checkout, installed with its dependencies into a fresh virtual
environment, and run from a folder outside the checkout on a real slide. Environment faults
(a broken installation, a read-only or full output folder, a report that cannot be written)
each give one error line naming what failed, never the input, and exit 2.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, run, sha256, shared_slide

SLIDE = "svs/CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment holding the wheel built from this checkout; its `bin/`."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w",
                    str(dist)], check=True, capture_output=True, timeout=600, cwd=base)
    [wheel] = dist.glob("wsideid-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # the versions the suite runs with (constraints.txt), from the package registry
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c",
                           str(ROOT / "constraints.txt"), str(wheel)],
                          capture_output=True, text=True, timeout=1200, cwd=base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return venv / "bin"


def _cli(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WSIDEID_KEY")}
    return subprocess.run([str(bin_dir / "wsideid"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_wheel_holds_every_module_and_catalog(installed):
    [wheel] = (installed.parent.parent / "dist").glob("wsideid-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "wsideid").rglob("*.py")}
    catalogs = {f"wsideid/formats/{p.name}" for p in (ROOT / "formats").glob("*.toml")}
    assert len(catalogs) >= 6
    assert modules - names == set()
    assert catalogs - names == set()


def test_installed_wheel_deidentifies_a_real_slide_from_another_folder(installed, tmp_path):
    src = tmp_path / "in" / "CMU-1-Small-Region.svs"
    src.parent.mkdir()
    shutil.copy(shared_slide(SLIDE), src)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(installed / "python"), "-c", "import wsideid; print(wsideid.__file__)"],
                          cwd=elsewhere, capture_output=True, text=True)
    assert str(installed.parent) in proc.stdout, "the wheel's copy must be the one imported"
    proc = _cli(installed, "deid", src, "-o", tmp_path / "out", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    outputs = [p for p in (tmp_path / "out").iterdir() if p.suffix == ".svs"]
    assert len(outputs) == 1 and outputs[0].name.startswith("wsi-")
    proc = _cli(installed, "inspect", outputs[0], "--json", cwd=elsewhere)
    assert proc.returncode == 0 and '"aperio-svs"' in proc.stdout


def test_missing_catalog_is_an_installation_error_not_the_inputs(installed, tmp_path):
    site = next(installed.parent.glob("lib/python3*/site-packages/wsideid/formats"))
    catalog = site / "aperio-svs.toml"
    saved = tmp_path / "saved.toml"
    shutil.copy(catalog, saved)
    catalog.unlink()
    try:
        src = tmp_path / "S26-PLANT.svs"
        shutil.copy(shared_slide(SLIDE), src)
        proc = _cli(installed, "deid", src, "-o", tmp_path / "out", cwd=tmp_path)
    finally:
        shutil.copy(saved, catalog)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("wsideid: error: installation: ") and "aperio-svs.toml" in proc.stderr
    assert "S26-PLANT" not in proc.stderr


# ---- output folder faults (tmpfs mounts: the tests run as root, which ignores modes) -------

@pytest.fixture
def mount(tmp_path):
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"these tests mount a tmpfs (run as root): {proc.stderr}"
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def _one_error(proc, names: str, not_named: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert names in errors[0] and not_named not in errors[0], errors[0]


def test_read_only_output_folder_names_the_folder(tmp_path, mount):
    ro = mount("ro", "ro,size=1m")
    src = tmp_path / "S26-PLANT.svs"
    shutil.copy(shared_slide(SLIDE), src)
    before = sha256(src)
    proc = run("deid", src, "-o", ro)
    _one_error(proc, str(ro), "S26-PLANT")
    assert "Read-only" in proc.stderr
    assert sha256(src) == before


def test_full_output_folder_names_the_folder_and_leaves_nothing(tmp_path, mount):
    full = mount("full", "size=256k")
    src = tmp_path / "S26-PLANT.svs"
    shutil.copy(shared_slide(SLIDE), src)   # 1.9 MB: does not fit
    before = sha256(src)
    proc = run("deid", src, "-o", full, "--report", tmp_path / "report.json")
    _one_error(proc, str(full), "S26-PLANT")
    assert "No space left" in proc.stderr
    assert list(full.iterdir()) == []
    assert sha256(src) == before


def test_report_that_cannot_be_written_is_named_and_leaves_no_partial(tmp_path, mount):
    ro = mount("ro", "ro,size=1m")
    src = tmp_path / "S26-PLANT.svs"
    shutil.copy(shared_slide(SLIDE), src)
    proc = run("deid", src, "-o", tmp_path / "out", "--report", ro / "report.json")
    _one_error(proc, str(ro / "report.json"), "S26-PLANT")
    assert "audit report" in proc.stderr
    # the report's folder is probed before any slide is read (issue 14, helper-hardening):
    # nothing is released without its report, and the OUTDIR the run would have made is not
    # left behind (a report that fails after the release, a full disk, is the next test)
    assert not (tmp_path / "out").exists()
    assert list(ro.iterdir()) == []


def test_report_on_a_full_disk_leaves_no_partial_file(tmp_path, mount):
    full = mount("full", "size=8k")
    (full / "filler").write_bytes(b"x" * 8192)    # tmpfs rounds up to pages: now it is full
    src = tmp_path / "S26-PLANT.svs"
    shutil.copy(shared_slide(SLIDE), src)
    proc = run("deid", src, "-o", tmp_path / "out", "--report", full / "report.json")
    _one_error(proc, str(full / "report.json"), "S26-PLANT")
    assert sorted(p.name for p in full.iterdir()) == ["filler"]
