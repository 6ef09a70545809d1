"""The real Aperio slides in ../shared/slides/svs pass the same checks as the synthetic ones."""
from __future__ import annotations

import json

import openslide
import pytest
import tifffile

from conftest import all_files, deid_real_copy, found_needles, run, shared_slide
from test_svs import raw_runs

CMU_NEEDLES = ["CMU-1", "b414003d-95c6-48b0-9369-8010ed517ba7", "12/29/09", "09:59:15",
               "CPAPERIOCS", "1004486", "USM Filter", "CMU-1-Small-Region"]
TCGA_NEEDLES = ["tcga-cr-7395-01a-01-ts1", "TCGA-CR-7395"]


@pytest.mark.parametrize("name,needles", [
    ("svs/CMU-1-Small-Region.svs", CMU_NEEDLES),
    ("svs/tcga-cr-7395-01a-01-ts1.svs", TCGA_NEEDLES),
])
def test_real_svs(tmp_path, name, needles):
    src, out, dst = deid_real_copy(tmp_path, name)
    assert dst.suffix == ".svs"
    assert found_needles(all_files(out), needles) == {}
    assert raw_runs(dst) == raw_runs(src)  # every pyramid tile byte-identical
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(dst)) as b:
        assert b.properties["openslide.vendor"] == "aperio"
        assert b.level_dimensions == a.level_dimensions
        for key in ("openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power"):
            assert b.properties.get(key) == a.properties.get(key)
        assert "label" not in b.associated_images and "macro" not in b.associated_images
        w, h = b.level_dimensions[-1]
        assert b.read_region((0, 0), len(b.level_dimensions) - 1, (w, h)).tobytes() == \
            a.read_region((0, 0), len(a.level_dimensions) - 1, (w, h)).tobytes()
    with tifffile.TiffFile(dst) as tf:
        for page in tf.pages:
            page.asarray()


def test_cmu1_report_names_every_removed_key(tmp_path):
    out = tmp_path / "out"
    run("deid", shared_slide("svs/CMU-1-Small-Region.svs"), "-o", out, check=0)
    report = json.loads((out / "wsideid-report.json").read_text())
    removed = {f["name"] for f in report["slides"][0]["fields"] if f["action"] == "remove"}
    assert {"aperio:Filename", "aperio:User", "aperio:Date", "aperio:Time",
            "aperio:ScanScope ID", "aperio:ImageID"} <= removed
    assert found_needles([out / "wsideid-report.json"], CMU_NEEDLES) == {}
    images = {(i["role"], i["action"]) for i in report["slides"][0]["images"]}
    assert ("label", "drop") in images and ("macro", "drop") in images
