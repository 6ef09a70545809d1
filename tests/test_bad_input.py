"""Bad input: one clear line naming the file, exit 2, nothing written, input untouched."""
from __future__ import annotations

import shutil
import struct

import pytest

from conftest import assert_rejected, run, sha256, shared_slide
from fixtures.svs import write_svs


def _not_a_slide(path):
    path.write_text("this is a text file, not a slide\n")


def _truncated(path):
    shutil.copy(shared_slide("svs/CMU-1-Small-Region.svs"), path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _ifd_loop(path):
    write_svs(path)
    import tifffile
    with tifffile.TiffFile(path) as tf:
        last = tf.pages[-1]
        first = tf.pages[0].offset
        count = len(last.tags)
        next_at = last.offset + 2 + count * 12
    with open(path, "r+b") as fh:
        fh.seek(next_at)
        fh.write(struct.pack("<I", first))


def _offset_past_eof(path):
    shutil.copy(shared_slide("svs/CMU-1-Small-Region.svs"), path)
    with open(path, "r+b") as fh:
        fh.seek(4)
        fh.write(struct.pack("<I", path.stat().st_size + 1000))


def _tile_past_eof(path):
    write_svs(path)
    import tifffile
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["TileOffsets"]
        at = tag.valueoffset
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack("<I", 0x7FFFFFF0))


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("make,expect", [
    (_not_a_slide, "not a TIFF"),
    (_truncated, "truncated or corrupt"),
    (_ifd_loop, "IFD loop"),
    (_offset_past_eof, "outside the file"),
    (_tile_past_eof, "past the end"),
    (_empty, "too short"),
])
def test_bad_input(tmp_path, make, expect):
    src = tmp_path / "bad.svs"
    make(src)
    assert_rejected(src, expect)


def test_missing_input(tmp_path):
    proc = run("deid", tmp_path / "nope.svs", "-o", tmp_path / "out")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_bad_input_in_place_is_untouched(tmp_path):
    src = tmp_path / "bad.svs"
    _ifd_loop(src)
    before = sha256(src)
    proc = run("deid", src, "--in-place")
    assert proc.returncode == 2
    assert src.exists() and sha256(src) == before


def test_usage_errors(tmp_path):
    assert run("deid", tmp_path).returncode == 2
    assert run("deid", tmp_path, "-o", tmp_path / "o", "--in-place").returncode == 2
    src = tmp_path / "x.svs"
    write_svs(src)
    proc = run("deid", src, "-o", tmp_path / "o", "--dates", "sometimes")
    assert proc.returncode == 2 and "--dates" in proc.stderr


def test_unwritable_output_folder(tmp_path):
    src = tmp_path / "x.svs"
    write_svs(src)
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    proc = run("deid", src, "-o", blocker / "out")
    assert proc.returncode == 2 and "cannot create output folder" in proc.stderr


def test_output_that_cannot_be_written_leaves_nothing(tmp_path):
    """A full disk, simulated with a file-size limit (EFBIG, like ENOSPC, mid-copy)."""
    import resource
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    src = tmp_path / "in.svs"
    shutil.copy(shared_slide("svs/CMU-1-Small-Region.svs"), src)
    before = sha256(src)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "wsideid", "deid", str(src), "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2
    # the output is the problem, not the input: the error names the output folder
    assert str(out) in proc.stderr and str(src) not in proc.stderr
    assert "too large" in proc.stderr.lower() and proc.stderr.count("\n") == 1
    assert sha256(src) == before
    assert not list(out.glob("*.svs")) and not list(out.glob(".*partial"))


def test_generic_tiff_keeps_every_tiled_level_and_drops_the_rest(tmp_path):
    import numpy as np
    import openslide
    import tifffile

    from conftest import all_files, found_needles

    src = tmp_path / "scan.tif"
    img = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, tile=(256, 256), compression="jpeg", metadata=None,
                 description="Patient GENERIC-QUACK", datetime="2020:01:02 03:04:05",
                 extratags=[(315, "s", 0, "ARTIST-GENERIC-QUACK", True)])
        tw.write(img[::2, ::2], tile=(256, 256), compression="jpeg", metadata=None)  # no NST flag
        tw.write(img[::8, ::8], compression="jpeg", metadata=None, description="label LBL-QUACK")
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, check=0)
    assert "unknown vendor" in proc.stderr
    [dst] = out.glob("*.tif")
    assert found_needles(all_files(out), ["GENERIC-QUACK", "LBL-QUACK", "2020:01:02"]) == {}
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        assert b.properties["openslide.vendor"] == "generic-tiff"
        assert b.level_dimensions == a.level_dimensions
    with tifffile.TiffFile(dst) as tf:  # both tiled IFDs kept (OpenSlide shows only flagged ones)
        assert [p.shape[:2] for p in tf.pages] == [(1024, 1024), (512, 512)]
