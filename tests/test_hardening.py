"""The file layer and command line against faults and misuse (issue 14): output paths that
must be refused, inputs that are not files, what an interrupted run leaves behind, and an
in-place batch killed after a release. Through the real command line, as a user runs it."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import ROOT, run, sha256
from fixtures.svs import write_svs

KEY = "hardening-key-0123456789abcdef"


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    return write_svs(tmp_path_factory.mktemp("svs") / "S26-4711.svs")


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


# ---- output paths refused before anything is read or made ----------------------------------

@pytest.mark.parametrize("case", ["key-in-outdir", "report-is-input", "map-is-input",
                                  "map-is-key", "map-in-input-folder", "key-in-place-folder"])
def test_output_paths_refused(tmp_path, svs, case):
    src = copy(svs, tmp_path / "in" / "a.svs")
    out = tmp_path / "out"
    key = tmp_path / "secret.key"
    args = ["deid", src, "-o", out, "--key-file", key]
    if case == "key-in-outdir":
        args = ["deid", src, "-o", out, "--key-file", out / "secret.key"]
        blame = str(out / "secret.key")
    elif case == "report-is-input":
        args += ["--report", src]
        blame = str(src)
    elif case == "map-is-input":
        args += ["--map", src]
        blame = str(src)
    elif case == "map-is-key":
        key.write_text(KEY)
        args += ["--map", key]
        blame = str(key)
    elif case == "map-in-input-folder":
        args = ["deid", src.parent, "-o", out, "--key-file", key, "--map", src.parent / "map.csv"]
        blame = str(src.parent / "map.csv")
    else:
        args = ["deid", src.parent, "--in-place", "--key-file", src.parent / "secret.key"]
        blame = str(src.parent / "secret.key")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    digest = sha256(src)
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert len(errors(proc)) == 1 and blame in errors(proc)[0], proc.stderr
    assert sha256(src) == digest
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # no OUTDIR, key or map made


def test_short_key_from_the_environment_is_refused(tmp_path, svs):
    env = {**os.environ, "WSIDEID_KEY": "abc"}
    proc = subprocess.run([sys.executable, "-m", "wsideid", "deid", str(svs), "-o",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2
    assert errors(proc) == ["wsideid: error: WSIDEID_KEY: the key is too short (3 bytes; need at least 16)"]
    assert not (tmp_path / "out").exists()


def test_key_in_a_missing_folder(tmp_path, svs):
    proc = run("deid", svs, "-o", tmp_path / "out", "--key-file", tmp_path / "no" / "k")
    assert proc.returncode == 2
    assert errors(proc) == [f"wsideid: error: {tmp_path / 'no' / 'k'}: cannot read or create "
                            "the key file: No such file or directory"]


# ---- inputs that are not files -------------------------------------------------------------

def test_fifo_named_and_in_a_folder(tmp_path, svs):
    folder = tmp_path / "in"
    copy(svs, folder / "good.svs")
    os.mkfifo(folder / "x.svs")
    proc = run("deid", folder / "x.svs", "-o", tmp_path / "out1")
    assert proc.returncode == 2
    assert errors(proc) == [f"wsideid: error: {folder / 'x.svs'}: not a regular file (a FIFO "
                            "(named pipe)): not a slide"]
    proc = run("deid", folder, "-o", tmp_path / "out2", "--key-file", tmp_path / "k")
    assert proc.returncode == 0, proc.stderr     # left out, like any file that is not a slide
    assert f"{folder / 'x.svs'}: not a regular file" in proc.stderr
    assert len(list((tmp_path / "out2").glob("wsi-*.svs"))) == 1


def test_dicomdir_is_not_a_slide(tmp_path):
    """A standard DICOM export (DICOMDIR + the instances in PT*/ST*/SE* folders): the slide is
    released, the DICOMDIR listed as not copied, exit 0."""
    import pydicom
    from pydicom.fileset import FileSet

    source = ROOT.parent / "shared" / "slides" / "dicom" / "openslide-boxes"
    if not source.is_dir():
        pytest.skip("no shared DICOM slides")
    staged = tmp_path / "staged"
    staged.mkdir()
    fs = FileSet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(source.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.StudyID = "P1", "S1"
            ds.SeriesNumber, ds.InstanceNumber = ds.get("SeriesNumber") or 1, ds.get("InstanceNumber") or 1
            ds.save_as(staged / path.name)
            fs.add(staged / path.name)
        fs.write(tmp_path / "export")
    proc = run("deid", tmp_path / "export", "-o", tmp_path / "out", "--key-file", tmp_path / "k")
    assert proc.returncode == 0, proc.stderr
    assert "DICOMDIR: a DICOMDIR (the index of a DICOM export), not a slide: not copied" in proc.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(list(source.glob("*.dcm")))


# ---- what an interrupted run leaves ---------------------------------------------------------

KILL_AFTER_COPY = """
import os, sys
import wsideid.adapters.tiff as tiff
tiff.write_tiff = lambda *a, **k: os.kill(os.getpid(), 9)   # the copy is made, then death
from wsideid.cli import main
sys.argv = ["wsideid", *sys.argv[1:]]
main()
"""


def test_stale_staging_is_removed_and_flagged(tmp_path, svs):
    """A `deid -o` killed after copying its input leaves `.wsi-....partial` (every identifier
    of the input): scan flags it, and the next run into OUTDIR removes it, whatever its key."""
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", KILL_AFTER_COPY, "deid", str(svs), "-o", str(out)],
                   cwd=ROOT, capture_output=True)
    [partial] = [p for p in out.iterdir() if p.name.endswith(".partial")]
    proc = run("scan", out)
    assert proc.returncode == 1
    assert f"{partial}: a temporary file an interrupted wsideid run left" in proc.stdout
    proc = run("deid", svs, "-o", out, "--key-file", tmp_path / "another.key")
    assert proc.returncode == 0, proc.stderr
    assert not partial.exists()
    assert not [p for p in out.rglob("*.partial")]


KILL_BEFORE_MAP_ROW = """
import os, sys
import wsideid.cli as cli
cli.RunView.finished = lambda self, slide: os.kill(os.getpid(), 9)
sys.argv = ["wsideid", *sys.argv[1:]]
cli.main()
"""


def test_in_place_killed_after_a_release_keeps_the_link(tmp_path, svs):
    """An in-place batch dies after a slide was renamed to its pseudonym but before its map
    row was written: its undo record is still there, so the next run puts the original back
    and releases it again, with its map row; a further run leaves the released slides as
    they are (no new pseudonyms)."""
    folder = tmp_path / "in"
    src = copy(svs, folder / "S26-4711-A1.svs")
    key, map_file = tmp_path / "secret.key", tmp_path / "map.csv"
    args = ["deid", str(folder), "--in-place", "--key-file", str(key), "--map", str(map_file),
            "--jobs", "1"]
    subprocess.run([sys.executable, "-c", KILL_BEFORE_MAP_ROW, *args], cwd=ROOT,
                   capture_output=True)
    assert any(p.name.endswith(".wsideid-undo") for p in folder.iterdir())
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    [released] = folder.glob("wsi-*.svs")
    rows = [r for r in csv.DictReader(map_file.open()) if r["kind"] == "slide"]
    assert [(r["source"], Path(r["output"]).name) for r in rows] == [(str(src), released.name)]
    again = run(*args)
    assert again.returncode == 0, again.stderr
    assert "released by wsideid already" in again.stderr
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".svs") == [released.name]
    assert len([r for r in csv.DictReader(map_file.open()) if r["kind"] == "slide"]) == 1


def test_report_covers_every_release_in_outdir(tmp_path, svs):
    """A second run with the same key and options into OUTDIR, on other inputs: the report
    lists the slides of both runs (it used to hold the last run's only)."""
    from fixtures.ndpi import write_ndpi
    import json

    ndpi = write_ndpi(tmp_path / "b.ndpi")
    out, key = tmp_path / "out", tmp_path / "k"
    run("deid", svs, "-o", out, "--key-file", key, check=0)
    run("deid", ndpi, "-o", out, "--key-file", key, check=0)
    report = json.loads((out / "wsideid-report.json").read_text())
    assert sorted(Path(s["output"]).suffix for s in report["slides"]) == [".ndpi", ".svs"]
    assert report["summary"]["ok"] == 2


# ---- a DICOM header reads alike in every process ---------------------------------------------

def test_dicom_header_reads_alike_whatever_pydicom_was_set_to(tmp_path, monkeypatch):
    """wsidicomizer, imported by convert (and wsidicom by verification), sets pydicom to raise
    on invalid values for the whole process: a header with text that is not UTF-8 was then
    'damaged' in such a process and readable in a fresh one. It reads alike in both, and the
    setting is left as it was."""
    import pydicom

    import hostile_inputs as H
    from wsideid.containers.dicom.io import read_header

    if not H.DICOM_SOURCE.exists():
        pytest.skip("no shared DICOM slides")
    [path] = (H.ALL_CASES["dicom-non-utf8-SH-LO-ST-LT-PN-UC-UT"](tmp_path).inputs[0]).glob("*.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh, start = read_header(path)
        monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                            pydicom.config.RAISE)
        strict, strict_start = read_header(path)
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.RAISE
    assert strict_start == start
    assert [(e.tag, e.value) for e in strict.iterall()] == [(e.tag, e.value) for e in fresh.iterall()]


def test_workers_print_no_library_warning_text(tmp_path):
    """DICOM text that is not UTF-8, de-identified by the pool: pydicom's warnings (they quote
    the values) are neither printed raw by a worker while the slides are surveyed nor shown
    with their text anywhere; at most one line naming the library."""
    import hostile_inputs as H

    if not H.DICOM_SOURCE.exists():
        pytest.skip("no shared DICOM slides")
    hostile = H.ALL_CASES["dicom-non-utf8-SH-LO-ST-LT-PN-UC-UT"](tmp_path / "in")
    proc = run("deid", tmp_path / "in", "-o", tmp_path / "out", "--key-file", tmp_path / "k",
               "--jobs", "2")
    assert "Traceback" not in proc.stderr
    raw = [line for line in proc.stderr.splitlines() if "Warning:" in line or "site-packages" in line]
    assert raw == [], raw[:3]
    assert not [n for n in hostile.needles if n.startswith("BAD") and n in proc.stderr]


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_sigterm_ends_a_batch_as_ctrl_c_does(tmp_path, svs, delay):
    """SIGTERM (a scheduler's time limit) ends the run cleanly: exit 130, one line saying it
    was interrupted, no traceback nor a library's warning (a pool's leaked semaphores were
    reported by multiprocessing), nothing half-written released; the same command then
    finishes and gives the tree an uninterrupted run gives."""
    import signal
    import time

    src = tmp_path / "in"
    for n in range(6):
        copy(svs, src / f"case-{n}" / f"slide-{n}.svs")
    env = {**os.environ, "WSIDEID_KEY": KEY}
    command = [sys.executable, "-m", "wsideid", "deid", str(src), "-o", str(tmp_path / "out"),
               "--jobs", "2"]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    # progress lines (not a terminal) and warnings start with "wsideid: "; nothing else may
    assert all(line.startswith("wsideid: ") for line in stderr.splitlines()), stderr
    if delay < 1 or proc.returncode != 0:     # later, a fast machine may finish first
        assert proc.returncode == 130, stderr
        assert [line for line in stderr.splitlines() if line.startswith("wsideid: error:")] \
            == [stderr.splitlines()[-1]] and "interrupted" in stderr.splitlines()[-1], stderr
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run(command[:-3] + [str(whole), "--jobs", "2"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    released = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.svs"))
    assert released == sorted(p.relative_to(whole) for p in whole.rglob("*.svs"))
    for rel in released:
        assert sha256(tmp_path / "out" / rel) == sha256(whole / rel)
