"""Batch exports end to end through the CLI: a generated export tree (cases of every format,
two slides per case, folder and file names made of planted identifiers, a DICOM series spread
over folders, a corrupt slide, a file that is not a slide), mirrored under pseudonyms,
resumed after SIGKILL at several moments, run again (nothing written), run on a Dask cluster,
and reviewed in the QC page in headless Chromium."""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_SLIDES, all_files, found_needles, run
from fixtures.mrxs import MrxsSpec, write_mrxs
from fixtures.ndpi import NdpiSpec, write_ndpi
from fixtures.ometiff import write_ome_tiff
from fixtures.svs import PLANTED as SVS_PLANTED
from fixtures.svs import SvsSpec, write_svs

# Folder and file names of the export: each is an identifier that must not survive.
CASES = {
    "DOE^JANE-MRN4711": "DOE^JANE",
    "ROE-RICHARD-MRN0815": "ROE-RICHARD",
    "SMITH-ANNA-19800101": "SMITH-ANNA",
    "MILLER-MAX-MRN9999": "MILLER-MAX",
}
NAME_NEEDLES = ["DOE^JANE", "MRN4711", "ROE-RICHARD", "MRN0815", "SMITH-ANNA", "19800101",
                "MILLER-MAX", "MRN9999", "S26-ACC-1111", "S26-ACC-2222", "S26-ACC-3333",
                "S26-ACC-4444", "S26-ACC-5555", "S26-ACC-6666", "S26-ACC-7777", "BLOCK-S26-8888",
                "SERIES-ACC-555", "CORRUPT-ACC-404", "NOTES-MRN4711", "S26-ACC-9999", "Jane Roe"]
# what the SVS fixture plants inside the slides (times of day are kept when dates are shifted)
CONTENT_NEEDLES = [v for k, v in SVS_PLANTED.items() if len(v) >= 6 and k not in ("time", "date")]


def _dicom_series(src: Path, dst_dir: Path, tag: str, spread: bool) -> None:
    """Copies of a real DICOM series under new UIDs (a distinct slide), optionally one
    instance per subfolder (a series spread over folders)."""
    import pydicom

    from pydicom.uid import generate_uid

    for n, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        for attr in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID"):
            if attr in ds:
                setattr(ds, attr, generate_uid(entropy_srcs=[str(ds[attr].value), tag]))
        if "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        folder = dst_dir / (f"part-{n}" if spread else "")
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"IM{n:04d}-{tag}.dcm")


def _generic_tiff(path: Path, width: int) -> Path:
    """A tiled TIFF no vendor claims (generic TIFF), with an identifying description."""
    import tifffile

    from fixtures.images import pattern

    with tifffile.TiffWriter(path) as tw:
        tw.write(pattern(512, width, 1), tile=(128, 128), compression="jpeg", photometric="rgb",
                 software=False, description="Patient Jane Roe S26-ACC-9999",
                 extratags=[(315, "s", 0, "Dr. Who", True)])
        tw.write(pattern(128, width // 4, 2), tile=(64, 64), compression="zlib", photometric="rgb",
                 software=False, subfiletype=1)
    return path


def make_tree(root: Path) -> Path:
    """The export: four cases of three or four slides, every format (SVS, NDPI, OME-TIFF,
    generic TIFF, MIRAX, DICOM) at least twice, names made of identifiers."""
    a, b, c, d = (root / name for name in CASES)
    for case in (a, b, c, d):
        case.mkdir(parents=True)
    write_svs(a / "S26-ACC-1111-A1.svs")
    write_svs(a / "S26-ACC-2222-A2.svs", SvsSpec(width=1280))
    write_ndpi(a / "S26-ACC-3333.ndpi")
    write_ome_tiff(b / "S26-ACC-4444.ome.tif")
    write_mrxs(b / "S26-ACC-5555.mrxs")
    write_ndpi(b / "S26-ACC-6666.ndpi", NdpiSpec(width=768))
    _generic_tiff(b / "S26-ACC-9999-GEN.tif", 768)
    _generic_tiff(c / "S26-ACC-9999-GEN2.tiff", 640)
    _dicom_series(SHARED_SLIDES / "dicom" / "openslide-boxes", c / "SERIES-ACC-555", "1", spread=True)
    _dicom_series(SHARED_SLIDES / "dicom" / "highdicom-sm", c, "2", spread=False)
    (d / "BLOCK-S26-8888").mkdir()
    write_svs(d / "BLOCK-S26-8888" / "S26-ACC-7777.svs", SvsSpec(width=1024))
    write_mrxs(d / "BLOCK-S26-8888" / "S26-ACC-6666-B.mrxs", MrxsSpec(images_x=6))
    write_ome_tiff(d / "S26-ACC-7777-B.ome.tif", width=768)
    corrupt = d / "CORRUPT-ACC-404.svs"
    shutil.copy(a / "S26-ACC-1111-A1.svs", corrupt)
    with open(corrupt, "r+b") as fh:
        fh.truncate(corrupt.stat().st_size // 3)
    (a / "NOTES-MRN4711.txt").write_text("Jane Doe, MRN 4711: frozen section\n")
    return root


SLIDES_OK = 13      # released slides of the tree (the corrupt one fails)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("export") / "incoming")


@pytest.fixture(scope="module")
def released(tree, tmp_path_factory):
    """One uninterrupted run of the whole tree (the reference)."""
    work = tmp_path_factory.mktemp("released")
    key = work / "secret.key"
    key.write_text("batch-test-key-0123456789abcdef")
    out = work / "out"
    proc = run("deid", tree, "-o", out, "--key-file", key, "--map", work / "map.csv",
               "--dates", "shift", "--jobs", "2")
    return work, key, out, proc


def tree_digest(out: Path) -> dict[str, str]:
    """Every released path and its bytes; the report without its run time. The journal is
    left out: it records runs (their ids and times), not slides' bytes."""
    digest = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if rel.startswith(".wsideid"):
            continue
        if path.is_dir():
            digest[rel + "/"] = "folder"
        elif path.name == "wsideid-report.json":
            report = json.loads(path.read_text())
            report.pop("run")
            digest[rel] = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()
        else:
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def test_tree_is_mirrored_under_pseudonyms(released, tree):
    work, key, out, proc = released
    assert proc.returncode == 1, proc.stderr      # one corrupt slide: exit 1, the rest released
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert any("CORRUPT-ACC-404.svs" in line for line in errors)
    assert "1 of 14 slides failed" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads((out / "wsideid-report.json").read_text())
    assert report["summary"] == {"ok": SLIDES_OK, "failed": 1}
    paths = [s["path"] for s in report["slides"] if s["status"] == "ok"]
    # grouping kept: each case is one pseudonymous top-level folder holding its slides
    tops = {p.split("/")[0] for p in paths}
    assert len(tops) == 4 and all(t.startswith("dir-") for t in tops)
    by_top = {t: sorted(p for p in paths if p.startswith(t + "/")) for t in tops}
    assert sorted(len(v) for v in by_top.values()) == [3, 3, 3, 4]
    # the nested folder (BLOCK-...) is mirrored one level down; the DICOM series spread over
    # two folders lands in the folder that holds both
    assert any(p.count("/") == 2 and p.endswith(".svs") for p in paths)
    dicom = [p for p in paths if not Path(p).suffix]
    assert len(dicom) == 2
    assert all(len(list((out / p).glob("*.dcm"))) >= 1 for p in dicom)
    # the file that is not a slide: listed (by a pseudonymous path), not copied
    [other] = report["not_slides"]
    assert other["path"].startswith(tuple(tops)) and "not a TIFF" in other["why"]
    assert not [p for p in out.rglob("*.txt")]
    # nothing half-written is left
    assert not [p for p in out.rglob(".*") if not p.relative_to(out).as_posix().startswith(".wsideid")]


def test_no_planted_identifier_in_any_path_or_byte(released, tree):
    work, key, out, proc = released
    qc = work / "qc.html"
    run("report", out, "--html", qc, check=0)
    files = all_files(out) + [qc]
    assert found_needles(files, NAME_NEEDLES + CONTENT_NEEDLES) == {}
    # the map is the private link: it names every folder and slide
    rows = list(csv.DictReader((work / "map.csv").open()))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"slide", "folder", "not a slide"}
    folders = [r for r in rows if r["kind"] == "folder"]
    assert {Path(r["source"]).name for r in folders} >= set(CASES) | {"BLOCK-S26-8888", "SERIES-ACC-555"}
    for r in folders:
        assert Path(r["output"]).is_dir() and Path(r["output"]).name == r["pseudonym"]


def test_same_folder_name_same_pseudonym_and_dates_shift_per_subject(released, tree):
    work, key, out, proc = released
    rows = {Path(r["source"]).name: r for r in csv.DictReader((work / "map.csv").open())}
    # the same key gives the same folder pseudonym in a later run, whatever else is in it
    other = work / "later"
    (other / "in" / "DOE^JANE-MRN4711").mkdir(parents=True)
    write_svs(other / "in" / "DOE^JANE-MRN4711" / "x.svs", SvsSpec(width=768))
    run("deid", other / "in", "-o", other / "out", "--key-file", key, check=0)
    assert (other / "out" / rows["DOE^JANE-MRN4711"]["pseudonym"]).is_dir()
    # dates: the two SVS slides of the first case are shifted by one offset, the third
    # case's SVS by another (the fixtures hold the same date)
    import tifffile

    def date_of(path: str) -> str:
        with tifffile.TiffFile(path) as tf:
            return [p for p in tf.pages[0].description.split("|") if p.startswith("Date = ")][0]

    a1, a2 = rows["S26-ACC-1111-A1.svs"]["output"], rows["S26-ACC-2222-A2.svs"]["output"]
    d1 = rows["S26-ACC-7777.svs"]["output"]
    assert date_of(a1) == date_of(a2) != date_of(d1)


def test_second_run_writes_nothing(released, tree):
    work, key, out, proc = released
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")
              if p.is_file() and ".wsideid" not in p.parts and p.name != "wsideid-report.json"}
    digest = tree_digest(out)
    again = run("deid", tree, "-o", out, "--key-file", key, "--map", work / "map.csv",
                "--dates", "shift", "--jobs", "2")
    assert again.returncode == 1      # the corrupt slide is tried again, and fails again
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")
             if p.is_file() and ".wsideid" not in p.parts and p.name != "wsideid-report.json"}
    assert after == before
    assert tree_digest(out) == digest
    assert again.stderr.count("released earlier") == SLIDES_OK
    rows = list(csv.reader((work / "map.csv").open()))
    assert len(rows) == len({tuple(r) for r in rows})      # the map did not repeat itself


def test_killed_runs_resume_to_the_same_tree(released, tree, tmp_path):
    """SIGKILL of the command at several moments (the pool's workers die with it), then
    one re-run: byte for byte the tree of the uninterrupted run."""
    work, key, out, proc = released
    reference = tree_digest(out)
    target = tmp_path / "out"
    journal = target / ".wsideid" / "journal.jsonl"

    def released_now() -> int:
        return journal.read_text().count('"type":"slide"') if journal.exists() else 0

    released_so_far = []
    # kill before anything is released, then as soon as 3, 7 and 11 slides are released
    # (while others are being copied, verified and renamed into place)
    for until in (0, 3, 7, 11):
        child = subprocess.Popen([sys.executable, "-m", "wsideid", "deid", str(tree), "-o", str(target),
                                  "--key-file", str(key), "--dates", "shift", "--jobs", "2"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        if until == 0:
            time.sleep(0.7)
        while released_now() < until and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        released_so_far.append(released_now())
    print("released before each kill:", released_so_far)
    assert released_so_far[-1] < SLIDES_OK, released_so_far
    final = run("deid", tree, "-o", target, "--key-file", key, "--dates", "shift", "--jobs", "2")
    assert final.returncode == 1, final.stderr
    assert tree_digest(target) == reference


def test_second_run_on_a_busy_folder_is_refused(released, tree, tmp_path):
    work, key, out, proc = released
    target = tmp_path / "out"
    (target / ".wsideid").mkdir(parents=True)
    with open(target / ".wsideid" / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run("deid", tree, "-o", target, "--key-file", key)
    assert busy.returncode == 2
    assert busy.stderr.strip().splitlines()[-1] == (
        f"wsideid: error: {target}: another wsideid run is writing to this output folder")
    # another key or other options on a folder released before: refused, nothing written
    other = tmp_path / "other.key"
    other.write_text("another-key-0123456789abcdef")
    proc2 = run("deid", tree, "-o", out, "--key-file", other)
    assert proc2.returncode == 2 and "another key" in proc2.stderr
    proc3 = run("deid", tree, "-o", out, "--key-file", key, "--dates", "remove")
    assert proc3.returncode == 2 and "other options" in proc3.stderr


def test_dry_run_shows_the_whole_plan(tree, tmp_path):
    out = tmp_path / "out"
    proc = run("deid", tree, "-o", out, "--dry-run", "--key-file", tmp_path / "k.key")
    assert proc.returncode == 1       # the corrupt slide
    assert not out.exists()
    assert not (tmp_path / "k.key").exists() and "a dry run creates none" in proc.stderr
    arrows = [line for line in proc.stdout.splitlines() if " -> " in line]
    assert len(arrows) == SLIDES_OK
    assert all(f"{out}/dir-" in line for line in arrows)
    assert "NOTES-MRN4711.txt" in proc.stdout and "not copied" in proc.stdout


def test_mapping_names_folders_and_slides(tree, tmp_path):
    mapping = tmp_path / "export.csv"
    mapping.write_text("original,pseudonym\n"
                       "DOE^JANE-MRN4711,SUBJ-001\n"          # a folder name
                       "S26-ACC-4444,SUBJ-002-SLIDE-A\n"      # a slide file's stem
                       f"{SVS_PLANTED['accession']},SUBJ-004-BARCODE\n"   # read from the SVS slides
                       "S19-1_A_1_1,SUBJ-003-ACC\n")          # DICOM AccessionNumber
    out = tmp_path / "out"
    proc = run("deid", tree, "-o", out, "--mapping", mapping, "--key-file", tmp_path / "k.key")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((out / "wsideid-report.json").read_text())
    paths = [s["path"] for s in report["slides"] if s["status"] == "ok"]
    assert any(p.startswith("SUBJ-001/") for p in paths)
    assert any(p.endswith("/SUBJ-002-SLIDE-A.ome.tif") for p in paths)
    assert any(p.endswith("/SUBJ-003-ACC") for p in paths)
    # every SVS carries the fixture's barcode: several slides of one folder share the
    # pseudonym, each followed by a part of its keyed pseudonym
    barcode = [p for p in paths if "SUBJ-004-BARCODE" in p]
    assert len(barcode) == 3 and len({Path(p).name for p in barcode}) == 3
    assert report["options"]["mapping"] is True
    # refused up front: two originals with one pseudonym; a pseudonym holding an original
    for text in ("original,pseudonym\nA-1,P-1\nB-2,P-1\n", "original,pseudonym\nMRN4711,X-MRN4711\n"):
        mapping.write_text(text)
        bad = run("deid", tree, "-o", tmp_path / "never", "--mapping", mapping)
        assert bad.returncode == 2 and not (tmp_path / "never").exists()
        assert len(bad.stderr.strip().splitlines()) == 1 and "mapping" in bad.stderr


def test_dask_cluster_gives_the_same_tree(released, tree, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    work, key, out, proc = released
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        target = tmp_path / "out"
        done = run("deid", tree, "-o", target, "--key-file", key, "--dates", "shift",
                   "--scheduler", cluster.scheduler_address)
    assert done.returncode == 1, done.stderr
    assert tree_digest(target) == tree_digest(out)


def test_qc_page_in_headless_chromium(released, tmp_path):
    work, key, out, proc = released
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is missing (make setup installs the Debian package)")
    page = tmp_path / "qc.html"
    run("report", out, "--html", page, check=0)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text      # nothing fetched
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=" + str(tmp_path / "profile"), "--window-size=1400,1000"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.stdout.count('<tr class="slide"') == SLIDES_OK + 1
    assert f'<span id="shown">{SLIDES_OK + 1}</span>' in dom.stdout   # the script ran
    shot = tmp_path / "qc.png"
    subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
    # the before page identifies: refused under OUTDIR, written beside the map when asked
    refused = run("report", out, "--html", page, "--before", out / "before.html", "--map", work / "map.csv")
    assert refused.returncode == 2 and not (out / "before.html").exists()
    before = work / "before.html"
    run("report", out, "--html", page, "--before", before, "--map", work / "map.csv", check=0)
    assert before.read_text().count('<tr class="slide"') == SLIDES_OK
    assert "DOE^JANE-MRN4711" in before.read_text()


def test_report_names_what_no_run_released_and_overwrites_nothing_else(released, tree, tmp_path):
    """The QC page of a folder holding a temporary file of an interrupted run (it may hold the
    input's bytes) or a file put there by hand says the folder is not ready, and the command
    lists them and exits 1. A page is never written over the map, the report, an input slide,
    any other file, or the other page."""
    work, key, out, proc = released
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    slide = next(p for p in all_files(copy) if p.suffix == ".svs")
    (slide.parent / f".{slide.name}.x1y2.partial").write_bytes(b"DOE^JANE-MRN4711")
    (slide.parent / "DOE^JANE notes.txt").write_text("MRN4711")
    page = tmp_path / "qc.html"
    proc2 = run("report", copy, "--html", page, check=None)
    assert proc2.returncode == 1
    assert "interrupted run" in proc2.stderr and "no wsideid run released this file" in proc2.stderr
    assert 'class="alarm"' in page.read_text() and "MRN4711" not in page.read_text()
    clean = run("report", out, "--html", tmp_path / "clean.html", check=None)
    assert clean.returncode == 0 and 'class="alarm"' not in (tmp_path / "clean.html").read_text()
    # an earlier QC page inside the folder is the folder's own; a before page copied in is not
    inside = tmp_path / "inside"
    shutil.copytree(out, inside, symlinks=True)
    shutil.copy(tmp_path / "clean.html", inside / "qc-earlier.html")
    assert run("report", inside, "--html", inside / "qc.html", check=None).returncode == 0
    (inside / "before-copy.html").write_text('<!DOCTYPE html>\n<title>wsideid: the inputs before '
                                             'de-identification (identifying)</title>')
    assert run("report", inside, "--html", inside / "qc.html", check=None).returncode == 1
    map_file = work / "map.csv"
    kept = map_file.read_bytes()
    an_input = next(p for p in all_files(tree) if p.suffix == ".svs")
    other = tmp_path / "notes.txt"
    other.write_text("not a page")
    for args in (["--html", map_file], ["--html", out / "wsideid-report.json"], ["--html", other],
                 ["--html", page, "--before", page, "--map", map_file],
                 ["--html", page, "--before", an_input, "--map", map_file]):
        refused = run("report", out, *args, check=None)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, args
    assert map_file.read_bytes() == kept and other.read_text() == "not a page"
    assert an_input.read_bytes()[:2] in (b"II", b"MM")


def test_mapping_rules_and_folder_pseudonyms(tmp_path):
    from wsideid.keyring import Keyring
    from wsideid.names import Mapping, MappingError, Namer, read_mapping, stem

    ring = Keyring(b"k" * 32)
    assert ring.folder_pseudonym("Case 1") == ring.folder_pseudonym("Case 1") != ring.folder_pseudonym("Case 2")
    assert ring.folder_pseudonym("Müller") == ring.folder_pseudonym("Mu\u0308ller")    # NFC
    assert ring.folder_pseudonym("x").startswith("dir-") and len(ring.folder_pseudonym("x")) == 20
    assert ring.date_shift_days("SUBJ-1") != ring.date_shift_days("SUBJ-2")
    assert ring.date_shift_days("") == ring.date_shift_days()
    assert stem("A.ome.tif") == "A" and stem("B.SVS") == "B" and stem("c.d.ndpi") == "c.d"

    def mapping(text: str):
        path = tmp_path / "m.csv"
        path.write_bytes(text.encode("utf-8"))
        return read_mapping(path)

    good = mapping("\ufeffOriginal;Pseudonym\nS26-1;SUBJ-A\n s26-2 ;SUBJ-B\n\n")
    assert good.get("s26-1") == "SUBJ-A" and good.get("S26-2") == "SUBJ-B"
    for text, why in [("a,b\n", "columns"), ("original,pseudonym\nA-1,P\nB-2,P\n", "two originals"),
                      ("original,pseudonym\nA-1,P-1\nA-1,P-2\n", "two pseudonyms"),
                      ("original,pseudonym\nAB-12,X\nCD-34,XAB-12Y\n", "contains the original of line 2"),
                      ("original,pseudonym\nA-1,a/x\n", "slash"),
                      ("original,pseudonym\nA-1,.hidden\n", "dot"),
                      # the original spelled otherwise inside a pseudonym
                      ("original,pseudonym\nMüller Hans,X\nB-2,\uff2düller Hans\n", "contains the original of line 2"),
                      ("original,pseudonym\nMüller Hans,X\nB-2,MULLER_HANS-7\n", "contains the original of line 2"),
                      # names that hide characters or that some system cannot hold
                      ("original,pseudonym\nA-1,Mül\u200bler\n", "invisible"),
                      ("original,pseudonym\nA-1,CASE\u202e1gpj.exe\n", "direction"),
                      ("original,pseudonym\nA-1,CASE\x85X\n", "control"),
                      ("original,pseudonym\nA-1,a:b*c?\n", "Windows"),
                      ("original,pseudonym\nA-1,CON\n", "Windows"),
                      ("original,pseudonym\nA-1,--in-place\n", "dash"),
                      ("original,pseudonym\nA-1,wsideid-report.json\n", "audit report")]:
        with pytest.raises(MappingError, match=why):
            mapping(text)
    namer = Namer(ring, good)
    assert namer.folders(("S26-1", "other")) == ("SUBJ-A", ring.folder_pseudonym("other"))
    assert namer.slide("S26-2.svs", []) == "SUBJ-B" and namer.slide("x.svs", ["s26-1"]) == "SUBJ-A"
    assert namer.subject(("top", "S26-1"), "") == "SUBJ-A"          # a mapped folder on the path
    assert namer.subject(("top",), "SUBJ-B") == "SUBJ-B"            # the slide's own match
    assert namer.subject(("top",), "") == ring.folder_pseudonym("top")
    assert Namer(ring, Mapping()).subject((), "") == ""             # the key's own shift


def test_changed_input_is_released_again_and_its_old_release_removed(tmp_path):
    case = tmp_path / "in" / "CASE-MRN4711"
    case.mkdir(parents=True)
    write_svs(case / "a.svs", SvsSpec(width=768))
    key = tmp_path / "k.key"
    out = tmp_path / "out"
    run("deid", tmp_path / "in", "-o", out, "--key-file", key, check=0)
    [first] = out.rglob("*.svs")
    time.sleep(0.01)
    write_svs(case / "a.svs", SvsSpec(width=1024))     # the same input path, new content
    run("deid", tmp_path / "in", "-o", out, "--key-file", key, check=0)
    [second] = out.rglob("*.svs")
    assert second.name != first.name and second.parent == first.parent
    report = json.loads((out / "wsideid-report.json").read_text())
    assert [s["path"] for s in report["slides"]] == [second.relative_to(out).as_posix()]


def test_scheduler_without_dask_says_how_to_install_it(tmp_path):
    (tmp_path / "in").mkdir()
    write_svs(tmp_path / "in" / "a.svs")
    code = ("import sys; sys.modules['dask'] = None; sys.modules['dask.distributed'] = None\n"
            "from wsideid.cli import main\n"
            f"sys.argv = ['wsideid', 'deid', {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'out')!r}, "
            "'--scheduler', 'tcp://127.0.0.1:1']\nmain()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "wsideid: error: --scheduler needs dask.distributed: pip install 'wsideid[dask]'\n"


def test_journal_drops_a_line_cut_short_and_removes_temporary_files(tmp_path):
    from wsideid.journal import Journal, Record

    out = tmp_path / "out"
    (out / "dir-a").mkdir(parents=True)
    (out / "dir-a" / "wsi-x.svs").write_bytes(b"released")
    (out / "dir-a" / ".wsi-y.svs.1234abcd.partial").write_bytes(b"half")
    (out / "dir-a" / ".wsi-z.1234abcd.partial").mkdir()
    journal = Journal(out)
    journal.open("key", "settings")
    stat = (out / "dir-a" / "wsi-x.svs").stat()
    journal.append(Record("job-1", "state-1", [["dir-a/wsi-x.svs", stat.st_size, stat.st_mtime_ns]]))
    journal.close()
    assert sorted(p.name for p in (out / "dir-a").iterdir()) == ["wsi-x.svs"]
    with open(out / ".wsideid" / "journal.jsonl", "a") as fh:
        fh.write('{"type":"slide","job":"job-2","sta')          # killed while appending
    again = Journal(out)
    again.open("key", "settings")
    assert again.done("job-1", "state-1") is not None
    assert again.done("job-1", "other inputs") is None and "job-2" not in again.records
    assert (out / ".wsideid" / "journal.jsonl").read_text().endswith("\n")
    again.close()
    (out / "dir-a" / "wsi-x.svs").write_bytes(b"changed!")    # an output changed since: not done
    third = Journal(out)
    third.open("key", "settings")
    assert third.done("job-1", "state-1") is None
    third.close()


def test_a_slide_with_a_name_as_long_as_the_file_system_allows(tmp_path):
    """A 250-byte file name is legal; the undo record an in-place run would keep beside it
    could not be named, which must not fail a run that is not in place."""
    folder = tmp_path / "in" / "case"
    folder.mkdir(parents=True)
    shutil.copy(SHARED_SLIDES / "svs" / "CMU-1-Small-Region.svs", folder / ("L" * 246 + ".svs"))
    out = tmp_path / "out"
    proc = run("deid", tmp_path / "in", "-o", out, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert len([p for p in all_files(out) if p.suffix == ".svs"]) == 1


def test_input_folders_of_different_names_going_into_one_folder_are_said(tmp_path):
    """NFC and NFD spellings of one name are one name (one pseudonym, by design); the run says
    that two input folders went into one released folder. Folders of one name in two inputs
    are one case by design and are not mentioned."""
    first, second = tmp_path / "in1", tmp_path / "in2"
    for folder in (first / "M\u00fcller", first / "Mu\u0308ller", second / "M\u00fcller"):
        folder.mkdir(parents=True)
    write_svs(first / "M\u00fcller" / "a.svs", SvsSpec(width=768))
    write_svs(first / "Mu\u0308ller" / "b.svs", SvsSpec(width=1024))
    write_svs(second / "M\u00fcller" / "c.svs", SvsSpec(width=896))
    out = tmp_path / "out"
    proc = run("deid", first, second, "-o", out, "--jobs", "1", "--key-file", tmp_path / "k.key")
    assert proc.returncode == 0, proc.stderr
    [folder] = [p for p in out.iterdir() if p.is_dir() and p.name != ".wsideid"]
    assert len(list(folder.glob("*.svs"))) == 3
    warned = [line for line in proc.stderr.splitlines() if "input folders of different names" in line]
    assert len(warned) == 1 and str(folder) in warned[0]
    third = tmp_path / "in3" / "M\u00fcller"
    third.mkdir(parents=True)
    write_svs(third / "d.svs", SvsSpec(width=640))
    same = run("deid", second, tmp_path / "in3", "-o", tmp_path / "out2", "--jobs", "1",
               "--key-file", tmp_path / "k.key")
    assert same.returncode == 0 and "input folders of different names" not in same.stderr


def test_a_slide_moved_to_another_case_between_runs_is_said(tmp_path):
    """The journal keeps no paths; a slide whose files (names, sizes, times) were released
    earlier from another folder is said to have moved, with the release that stays."""
    tree = tmp_path / "in"
    for case in ("CASE-A", "CASE-B"):
        (tree / case).mkdir(parents=True)
    write_svs(tree / "CASE-A" / "a.svs", SvsSpec(width=768))
    write_svs(tree / "CASE-A" / "b.svs", SvsSpec(width=1024))
    key, out = tmp_path / "k.key", tmp_path / "out"
    run("deid", tree, "-o", out, "--key-file", key, "--jobs", "1")
    again = run("deid", tree, "-o", out, "--key-file", key, "--jobs", "1")
    assert "released by an earlier run from another folder" not in again.stderr
    (tree / "CASE-A" / "b.svs").rename(tree / "CASE-B" / "b.svs")
    moved = run("deid", tree, "-o", out, "--key-file", key, "--jobs", "1")
    said = [line for line in moved.stderr.splitlines() if "from another folder" in line]
    assert len(said) == 1 and "b.svs" in said[0]
    old_release = Path(said[0].split(", as ", 1)[1].split(": if the slide moved", 1)[0])
    assert old_release.parent.parent == out and old_release.exists()
