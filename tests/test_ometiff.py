"""OME-TIFF end to end: synthetic pyramids with label and macro, the real Bio-Formats file, bad XML."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import all_files, assert_rejected, deid_real_copy, found_needles, run, sha256, stored_runs
from fixtures.ometiff import PLANTED, ome_xml, write_ome_tiff
from wsideid.adapters.ometiff import ome_schema, schema_errors

NEEDLES = list(PLANTED.values())


def raw_tiles(path: Path) -> list[list[bytes]]:
    """Stored bytes of every tile of the first series, all pyramid levels (SubIFDs)."""
    with tifffile.TiffFile(path) as tf:
        return [stored_runs(tf.filehandle, level.pages[0]) for level in tf.series[0].levels]


def assert_valid_ome(path: Path) -> str:
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        xml = tf.pages[0].description
    assert ome_schema() is not None, "the OME schema (ome-types) must be installed for the tests"
    errors = schema_errors(xml)
    assert not errors, errors[0]
    return xml


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    work = tmp_path_factory.mktemp("ome")
    src = write_ome_tiff(work / PLANTED["file_name"])
    assert_valid_ome(src)  # the fixture itself is valid OME
    before = sha256(src)
    out = work / "out"
    run("deid", src, "-o", out, check=0)
    [dst] = out.glob("*.ome.tif")
    return src, before, dst


def test_ome_planted_identifiers_gone(synthetic):
    src, before, dst = synthetic
    assert set(found_needles([src], NEEDLES)[str(src)]) == set(NEEDLES)
    assert found_needles(all_files(dst.parent), NEEDLES) == {}
    assert sha256(src) == before


def test_ome_valid_same_pyramid_no_label_or_macro(synthetic):
    src, before, dst = synthetic
    xml = assert_valid_ome(dst)
    assert f'FileName="{dst.name}"' in xml
    assert f'Name="{dst.name.split(".")[0]}"' in xml  # the Image is named with the pseudonym
    assert 'PhysicalSizeX="0.25"' in xml and "NominalMagnification=\"20\"" in xml
    assert "openmicroscopy.org/PyramidResolution" in xml
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        assert len(a.series) == 3 and len(b.series) == 1
        assert b.series[0].shape == a.series[0].shape
        assert [lv.shape for lv in b.series[0].levels] == [lv.shape for lv in a.series[0].levels]
        assert np.array_equal(b.series[0].levels[2].asarray(), a.series[0].levels[2].asarray())
    assert raw_tiles(dst) == raw_tiles(src)


def test_ome_tiffdata_renumbered_when_a_middle_image_goes(tmp_path):
    src = write_ome_tiff(tmp_path / "in.ome.tif")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--macro", "keep", "--no-ocr", check=0)  # label (IFD 1) dropped, macro kept
    [dst] = out.glob("*.ome.tif")
    xml = assert_valid_ome(dst)
    assert re.search(r'<Image ID="Image:2" Name="macro">.*?<TiffData IFD="1"', xml, re.S)
    with tifffile.TiffFile(dst) as tf:
        assert [s.shape for s in tf.series] == [(768, 1024, 3), (300, 800, 3)]


def test_ome_dates_shift(tmp_path):
    src = write_ome_tiff(tmp_path / "in.ome.tif")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--dates", "shift", "--key-file", tmp_path / "k", check=0)
    [dst] = out.glob("*.ome.tif")
    xml = assert_valid_ome(dst)
    date = re.search(r"<AcquisitionDate>(.*?)</AcquisitionDate>", xml).group(1)
    assert date != PLANTED["date"] and date.endswith("T13:37:42")


def test_real_ome_tiff(tmp_path):
    src, out, dst = deid_real_copy(tmp_path, "ometiff/OS-2-ndpi.ome.tif")
    assert dst.name.endswith(".ome.tif")
    needles = ["OS-2-ndpi", "77794f72-4f3e-4627-b2e4-93dd22c15977"]
    assert found_needles(all_files(out), needles) == {}
    assert_valid_ome(dst)
    assert raw_tiles(dst) == raw_tiles(src)
    with tifffile.TiffFile(src) as a, tifffile.TiffFile(dst) as b:
        assert b.series[0].shape == a.series[0].shape
        assert np.array_equal(b.series[0].asarray(), a.series[0].asarray())


BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">&lol3;</OME>')
BROKEN = ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
          '<Image ID="Image:0"><Pixels')
EXTERNAL = ('<?xml version="1.0"?><!DOCTYPE OME SYSTEM "http://example.invalid/evil.dtd">'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"/>')


def test_schema_check_catches_an_invalid_document():
    good = ome_xml(64, 64, plant=False)
    assert schema_errors(good) == []
    assert schema_errors(good.replace("<Pixels ", "<Pixelz ", 1).replace("</Pixels>", "</Pixelz>", 1))


@pytest.mark.parametrize("xml,expect", [(BOMB, "DOCTYPE"), (BROKEN, "not well-formed"),
                                        (EXTERNAL, "DOCTYPE")])
def test_bad_ome_xml(tmp_path, xml, expect):
    assert_rejected(write_ome_tiff(tmp_path / "bad.ome.tif", xml=xml), expect)


def test_malformed_xml_error_does_not_quote_the_slide(tmp_path):
    xml = ('<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><DOE-JANE-TAG></Image></OME>')
    src = write_ome_tiff(tmp_path / "bad.ome.tif", xml=xml)
    assert_rejected(src, "not well-formed (line 1")
    proc = run("deid", src, "-o", tmp_path / "out2")
    assert "DOE-JANE-TAG" not in proc.stderr
    assert "DOE-JANE-TAG" not in (tmp_path / "out2" / "wsideid-report.json").read_text()


def test_foreign_namespaces_comments_and_instructions_leave_nothing(tmp_path):
    xml = ome_xml(256, 256, plant=False)
    xml = xml.replace('<OME ', '<OME xmlns:doe="http://hospital.example/NSDECL-DOE-QUACK" '
                               'doe:note="NSATTR-DOE-QUACK" ', 1)
    xml = xml.replace('<Pixels ', '<!-- INNER-COMMENT-DOE --><?pi PI-DOE-QUACK?><Pixels ', 1)
    src = write_ome_tiff(tmp_path / "ns.ome.tif", xml=xml)
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    assert found_needles(all_files(out), ["NSDECL-DOE-QUACK", "NSATTR-DOE-QUACK",
                                          "INNER-COMMENT-DOE", "PI-DOE-QUACK"]) == {}
