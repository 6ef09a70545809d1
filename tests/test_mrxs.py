"""3DHistech MIRAX: the synthetic generator checked against OpenSlide, then de-identification
through the command line, and bad input."""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import openslide
import pytest
from conftest import all_files, found_needles, run, sha256

from fixtures.images import pattern
from fixtures.mrxs import MPP, PLANTED, MrxsSpec, write_mrxs
from wsideid.containers.mirax.index import IndexFile
from wsideid.containers.mirax.slidedat import Slidedat

NEEDLES = sorted(set(PLANTED.values()))


def tree_hashes(mrxs: Path) -> dict[str, str]:
    folder = mrxs.with_suffix("")
    return {str(p.relative_to(mrxs.parent)): sha256(p) for p in [mrxs, *sorted(folder.iterdir())]}


def output_slide(out: Path) -> Path:
    [mrxs] = [p for p in out.iterdir() if p.name.endswith(".mrxs")]
    return mrxs


def pixels(slide: openslide.OpenSlide, level: int, box=None) -> np.ndarray:
    w, h = slide.level_dimensions[level]
    x, y, bw, bh = box or (0, 0, w, h)
    ds = slide.level_downsamples[level]
    return np.asarray(slide.read_region((int(x * ds), int(y * ds)), level, (bw, bh)))


def tile_records(mrxs: Path) -> list[tuple[int, int, int, int]]:
    folder = mrxs.with_suffix("")
    ini = Slidedat.parse((folder / "Slidedat.ini").read_bytes())
    levels = int(ini.sections["HIERARCHICAL"]["HIER_0_COUNT"])
    nonhier = sum(int(ini.sections["HIERARCHICAL"][f"NONHIER_{i}_COUNT"])
                  for i in range(int(ini.sections["HIERARCHICAL"]["NONHIER_COUNT"])))
    index = IndexFile.parse((folder / "Index.dat").read_bytes(), ini.sections["GENERAL"]["SLIDE_ID"],
                            int(ini.sections["HIERARCHICAL"]["HIER_COUNT"]) - 1 + levels, nonhier)
    return [item for record in index.hier[:levels] if record for item in record.items()]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_mrxs(tmp_path_factory.mktemp("mrxs") / "S26-PLANT-0815.mrxs")


def test_generator_is_a_mirax_slide_openslide_reads(slide):
    with openslide.OpenSlide(str(slide)) as s:
        assert s.properties["openslide.vendor"] == "mirax"
        assert s.level_dimensions == ((2048, 1536), (1024, 768), (512, 384), (256, 192))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        assert s.properties["openslide.objective-power"] == "20"
        assert {k: v.size for k, v in s.associated_images.items()} == {
            "macro": (1000, 380), "label": (300, 200), "thumbnail": (320, 240)}
        # image (x=3, y=2) of level 0 is where OpenSlide draws it: its own pattern, not a neighbour's
        region = pixels(s, 0, (768, 512, 256, 256))[..., :3].astype(int)
        own = np.abs(region - pattern(256, 256, 2 * 8 + 3)).mean()
        neighbour = np.abs(region - pattern(256, 256, 2 * 8 + 2)).mean()
        assert own < 10 < neighbour
        region = pixels(s, 1, (512, 256, 256, 256))[..., :3].astype(int)   # level 1, image (4, 2)
        assert np.abs(region - pattern(256, 256, 10007 + 2 * 8 + 4)).mean() < 10
    raw = (slide.with_suffix("") / "Slidedat.ini").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


@pytest.fixture(scope="module")
def deidentified(slide, tmp_path_factory):
    before = tree_hashes(slide)
    out = tmp_path_factory.mktemp("out")
    proc = run("deid", slide, "-o", out, check=0)
    assert tree_hashes(slide) == before
    return out, proc


def test_default_output_has_no_planted_identifier(deidentified):
    out, _ = deidentified
    assert found_needles(all_files(out), NEEDLES) == {}
    mrxs = output_slide(out)
    folder = mrxs.with_suffix("")
    assert mrxs.name.startswith("wsi-") and folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["Data0000.dat", "Data0001.dat",
                                                        "Index.dat", "Slidedat.ini"]
    assert sorted(p.name for p in out.iterdir()) == sorted([mrxs.name, folder.name, "wsideid-report.json",
                                                             ".wsideid"])


def test_default_output_reads_the_same_in_openslide(slide, deidentified):
    out, _ = deidentified
    with openslide.OpenSlide(str(slide)) as a, openslide.OpenSlide(str(output_slide(out))) as b:
        assert b.properties["openslide.vendor"] == "mirax"
        assert a.level_dimensions == b.level_dimensions
        for key in ("openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power"):
            assert a.properties[key] == b.properties[key]
        assert set(b.associated_images) == {"thumbnail"}     # label and macro dropped
        assert np.array_equal(np.asarray(a.associated_images["thumbnail"]),
                              np.asarray(b.associated_images["thumbnail"]))
        for level in range(a.level_count):
            assert np.array_equal(pixels(a, level), pixels(b, level)), level


def test_tiles_are_byte_identical_except_the_removed_comment(slide, deidentified):
    out, _ = deidentified
    mrxs = output_slide(out)
    src, dst = slide.with_suffix(""), mrxs.with_suffix("")
    before, after = tile_records(slide), tile_records(mrxs)
    assert len(before) == len(after) == 48 + 12 + 4 + 1
    changed = 0
    for (i, off, n, f), (i2, off2, n2, f2) in zip(before, after):
        assert (i, off, f) == (i2, off2, f2)
        old = (src / f"Data{f:04d}.dat").read_bytes()[off:off + n]
        new = (dst / f"Data{f2:04d}.dat").read_bytes()[off2:off2 + n2]
        if old != new:
            changed += 1
            comment = PLANTED["tile_comment"].encode()
            assert old.replace(b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment, b"") == new
    assert changed == 1


def test_slidedat_keeps_bom_crlf_and_renumbers_records(deidentified):
    out, _ = deidentified
    folder = output_slide(out).with_suffix("")
    raw = (folder / "Slidedat.ini").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    ini = Slidedat.parse(raw).sections
    hier = ini["HIERARCHICAL"]
    # the profile layer (1) went, so the position buffer (2) is now layer 1, and its sections too
    assert hier["NONHIER_COUNT"] == "2"
    assert (hier["NONHIER_0_COUNT"], hier["NONHIER_0_VAL_0"]) == ("1", "ScanDataLayer_SlidePreview")
    assert hier["NONHIER_0_VAL_0_SECTION"] == "NONHIERLAYER_0_LEVEL_0_SECTION"
    assert ini["NONHIERLAYER_0_LEVEL_0_SECTION"] == {"PREVIEW_IMAGE_TYPE": "JPEG"}
    assert hier["NONHIER_1_NAME"] == "VIMSLIDE_POSITION_BUFFER"
    assert hier["NONHIER_1_VAL_0_SECTION"] == "NONHIERLAYER_1_LEVEL_0_SECTION"
    assert ini["NONHIERLAYER_1_SECTION"] == {"VIMSLIDE_POSITION_DATA_FORMAT_VERSION": "257"}
    assert not any(name.startswith("NONHIERLAYER_2") for name in ini)
    assert "CUSTOM_INFO_SECTION" not in ini
    general = ini["GENERAL"]
    assert len(general["SLIDE_ID"]) == len(PLANTED["slide_id"]) and general["SLIDE_ID"] != PLANTED["slide_id"]
    assert general["SLIDE_NAME"] == folder.name
    for key in ("PROJECT_NAME", "SLIDE_CREATIONDATETIME", "SLIDE_UTC_CREATIONDATETIME",
                "SCANNER_HARDWARE_ID", "SCAN_OPERATOR_NOTE"):
        assert key not in general
    # the new identifier is in Index.dat and in every data file header
    for name in ("Index.dat", "Data0000.dat", "Data0001.dat"):
        assert (folder / name).read_bytes()[:37] == b"01.02" + general["SLIDE_ID"].encode()


def test_dropped_records_leave_only_zeros(slide, deidentified):
    """Every data-file byte that no kept record uses is zero (the label, macro, overview and
    profile records, and the ProfileName after the header)."""
    out, _ = deidentified
    mrxs = output_slide(out)
    folder = mrxs.with_suffix("")
    ini = Slidedat.parse((folder / "Slidedat.ini").read_bytes()).sections
    index = IndexFile.parse((folder / "Index.dat").read_bytes(), ini["GENERAL"]["SLIDE_ID"], 5, 2)
    used: dict[int, np.ndarray] = {}
    for f in range(2):
        data = np.frombuffer((folder / f"Data{f:04d}.dat").read_bytes(), dtype=np.uint8)
        used[f] = np.zeros(len(data), bool)
        used[f][:37] = True
    for record in index.hier + index.nonhier:
        for item in (record.items() if record else ()):
            off, n, f = item[-3:]
            used[f][off:off + n] = True
    for f, mask in used.items():
        data = np.frombuffer((folder / f"Data{f:04d}.dat").read_bytes(), dtype=np.uint8)
        assert not data[~mask].any(), f
        assert mask[-1], "the file ends with its last kept record"


def test_keep_label_and_macro_removes_their_text_only(slide, tmp_path):
    out = tmp_path / "out"
    run("deid", slide, "-o", out, "--label", "keep", "--macro", "keep", "--no-ocr", check=0)
    mrxs = output_slide(out)
    with openslide.OpenSlide(str(slide)) as a, openslide.OpenSlide(str(mrxs)) as b:
        assert set(b.associated_images) == {"label", "macro", "thumbnail"}
        for name in ("label", "macro"):
            assert np.array_equal(np.asarray(a.associated_images[name]), np.asarray(b.associated_images[name]))
    # the label's JPEG comment and its section's BARCODE_VALUE are gone; the overview is kept too
    assert found_needles(all_files(out), [PLANTED["label_comment"], PLANTED["barcode_value"]]) == {}
    ini = Slidedat.parse((mrxs.with_suffix("") / "Slidedat.ini").read_bytes()).sections
    assert [ini["HIERARCHICAL"][f"NONHIER_0_VAL_{j}"] for j in range(4)] == [
        "ScanDataLayer_SlideThumbnail", "ScanDataLayer_SlideBarcode",
        "ScanDataLayer_SlidePreview", "ScanDataLayer_WholeSlide"]


def test_options_dates_shift_device_id_and_stable_pseudonyms(slide, tmp_path):
    key = tmp_path / "key"
    outs = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        run("deid", slide, "-o", out, "--dates", "shift", "--keep-device-id", "--key-file", key, check=0)
        outs.append(output_slide(out))
    assert outs[0].name == outs[1].name
    inis = [Slidedat.parse((m.with_suffix("") / "Slidedat.ini").read_bytes()).sections["GENERAL"] for m in outs]
    assert inis[0]["SLIDE_ID"] == inis[1]["SLIDE_ID"]
    assert inis[0]["SCANNER_HARDWARE_ID"] == PLANTED["scanner_id"]
    shifted = inis[0]["SLIDE_CREATIONDATETIME"]
    assert shifted != PLANTED["created"] and shifted.endswith(" 13:37:42")
    day, month, year = map(int, shifted[:10].split("/"))
    assert 2011 <= year <= 2021 and 1 <= month <= 12 and 1 <= day <= 31
    report = (outs[0].parent / "wsideid-report.json").read_text()
    assert '"dates": "shift"' in report and '"keep_device_id": true' in report


def test_dry_run_and_scan(slide, deidentified):
    out, _ = deidentified
    proc = run("deid", slide, "--dry-run", check=0)
    assert "ScanDataLayer_SlideBarcode" in proc.stdout and PLANTED["project"] not in proc.stdout
    proc = run("scan", slide)
    assert proc.returncode == 1 and "label image present" in proc.stdout
    needles = out.parent / "needles.txt"
    needles.write_text("\n".join(NEEDLES))
    proc = run("scan", output_slide(out), "--needles", needles)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("clean")


def test_slide_without_a_label_record_or_planted_text(tmp_path):
    """A slide without a label record (indices shift differently) and without planted text."""
    src = write_mrxs(tmp_path / "plain.mrxs", MrxsSpec(label=False, plant=False, levels=3))
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    with openslide.OpenSlide(str(output_slide(out))) as b:
        assert set(b.associated_images) == {"thumbnail"}
        assert b.level_count == 3


# -- bad input ----------------------------------------------------------------------------

def broken_copy(slide: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "case" / slide.name
    dst.parent.mkdir()
    shutil.copy(slide, dst)
    shutil.copytree(slide.with_suffix(""), dst.with_suffix(""))
    return dst


def set_key(mrxs: Path, old: str, new: str) -> None:
    ini = mrxs.with_suffix("") / "Slidedat.ini"
    data = ini.read_bytes()
    assert old.encode() in data
    ini.write_bytes(data.replace(old.encode(), new.encode()))


def assert_mrxs_rejected(mrxs: Path, expect: str) -> None:
    before = tree_hashes(mrxs) if mrxs.with_suffix("").is_dir() else {}
    out = mrxs.parent / "out"
    proc = run("deid", mrxs, "-o", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert len(errors) == 1 and str(mrxs) in errors[0] and expect in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    if before:
        assert tree_hashes(mrxs) == before
    assert [p.name for p in out.iterdir()] in ([], ["wsideid-report.json"])
    report = out / "wsideid-report.json"
    if report.exists() and len(mrxs.name) > 8:   # the failure is reported without the slide's name
        assert mrxs.name[:-5].lower() not in report.read_text().lower()


def test_missing_data_file(slide, tmp_path):
    bad = broken_copy(slide, tmp_path)
    (bad.with_suffix("") / "Data0001.dat").unlink()
    assert_mrxs_rejected(bad, "missing file")


def test_index_pointing_past_the_end(slide, tmp_path):
    bad = broken_copy(slide, tmp_path)
    index = bad.with_suffix("") / "Index.dat"
    data = bytearray(index.read_bytes())
    hier_table = struct.unpack_from("<i", data, 37)[0]
    struct.pack_into("<i", data, hier_table, len(data) + 1000)   # zoom level 0's record
    index.write_bytes(bytes(data))
    assert_mrxs_rejected(bad, "past")


def test_record_pointing_past_the_end_of_its_data_file(slide, tmp_path):
    bad = broken_copy(slide, tmp_path)
    index = bad.with_suffix("") / "Index.dat"
    data = bytearray(index.read_bytes())
    head = struct.unpack_from("<i", data, struct.unpack_from("<i", data, 37)[0])[0]
    page = struct.unpack_from("<i", data, head + 4)[0]
    struct.pack_into("<i", data, page + 8 + 8, 1 << 30)        # first tile's length
    index.write_bytes(bytes(data))
    assert_mrxs_rejected(bad, "points past the end of data file 0")


def test_slidedat_without_the_sections_readers_need(slide, tmp_path):
    bad = broken_copy(slide, tmp_path)
    set_key(bad, "[HIERARCHICAL]", "[HIERARCHICAL_GONE]")
    assert_mrxs_rejected(bad, "section [HIERARCHICAL] is missing")


@pytest.mark.parametrize("name", ["../escape.dat", "/etc/passwd", "sub/../../x.dat"])
def test_data_file_name_escaping_the_folder(slide, tmp_path, name):
    bad = broken_copy(slide, tmp_path)
    (tmp_path / "case" / "escape.dat").write_bytes(b"x" * 10)
    set_key(bad, "FILE_1 = Data0001.dat", f"FILE_1 = {name}")
    assert_mrxs_rejected(bad, "outside the slide folder")


def test_data_file_that_is_a_symlink(slide, tmp_path):
    bad = broken_copy(slide, tmp_path)
    folder = bad.with_suffix("")
    target = tmp_path / "elsewhere.dat"
    shutil.move(folder / "Data0001.dat", target)
    os.symlink(target, folder / "Data0001.dat")
    assert_mrxs_rejected(bad, "symbolic link")


def test_missing_slide_folder_and_slide_id_mismatch(slide, tmp_path):
    lonely = tmp_path / "lonely.mrxs"
    lonely.write_bytes(b"")
    assert_mrxs_rejected(lonely, "slide folder beside the .mrxs file is missing")
    bad = broken_copy(slide, tmp_path)
    set_key(bad, f"SLIDE_ID = {PLANTED['slide_id']}", "SLIDE_ID = 0000000000000000000000000000dead")
    assert_mrxs_rejected(bad, "SLIDE_ID")


def test_batch_goes_on_after_a_broken_slide(slide, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a", "b"):
        shutil.copy(slide, batch / f"{name}.mrxs")
        shutil.copytree(slide.with_suffix(""), batch / name)
    set_key(batch / "b.mrxs", "[DATAFILE]", "[NOPE]")
    (batch / "a" / "Slidedat.ini").write_bytes((batch / "a" / "Slidedat.ini").read_bytes() + b"\r\n")
    out = tmp_path / "out"
    proc = run("deid", batch, "-o", out)
    assert proc.returncode == 1     # a slide found in a folder failed; the others were released
    line = f"wsideid: error: {batch / 'b.mrxs'}: Slidedat.ini: section [DATAFILE] is missing"
    assert [e for e in proc.stderr.splitlines() if e.startswith("wsideid: error:")] == [
        line, "wsideid: error: 1 of 2 slides failed:", line]
    assert len([p for p in out.iterdir() if p.name.endswith(".mrxs")]) == 1


def test_in_place_patches_the_slide_and_renames_it(slide, tmp_path):
    src = broken_copy(slide, tmp_path)
    folder = src.with_suffix("")
    # data files listed in the other order, under other names: the in-place renames must not
    # overwrite one with the other
    os.rename(folder / "Data0000.dat", folder / "tmp.dat")
    os.rename(folder / "Data0001.dat", folder / "Data0000.dat")
    os.rename(folder / "tmp.dat", folder / "Data0001.dat")
    set_key(src, "FILE_0 = Data0000.dat\r\nFILE_1 = Data0001.dat",
            "FILE_0 = Data0001.dat\r\nFILE_1 = Data0000.dat")
    with openslide.OpenSlide(str(src)) as s:
        before = [pixels(s, level) for level in range(s.level_count)]
        dims = s.level_dimensions
    proc = run("deid", src, "--in-place", check=0)
    assert not src.exists() and not folder.exists()
    [mrxs] = [p for p in src.parent.iterdir() if p.name.endswith(".mrxs")]
    assert mrxs.name.startswith("wsi-")
    assert sorted(p.name for p in mrxs.with_suffix("").iterdir()) == [
        "Data0000.dat", "Data0001.dat", "Index.dat", "Slidedat.ini"]
    assert found_needles(all_files(src.parent), NEEDLES) == {}, proc.stdout
    with openslide.OpenSlide(str(mrxs)) as s:
        assert s.level_dimensions == dims and set(s.associated_images) == {"thumbnail"}
        for level, want in enumerate(before):
            assert np.array_equal(pixels(s, level), want), level


def test_in_place_refuses_a_folder_with_extra_files(slide, tmp_path):
    src = broken_copy(slide, tmp_path)
    (src.with_suffix("") / "notes.txt").write_text("x")
    before = tree_hashes(src)
    proc = run("deid", src, "--in-place")
    assert proc.returncode == 2 and "files the slide does not use" in proc.stderr
    assert tree_hashes(src) == before


def test_convert_to_dicom_needs_allow_transcode(slide, tmp_path):
    out = tmp_path / "dicom"
    proc = run("convert", slide, "--to", "dicom", "-o", out)
    assert proc.returncode == 2 and "--allow-transcode" in proc.stderr
    assert [p.name for p in out.iterdir()] in ([], ["wsideid-report.json"])
    run("convert", slide, "--to", "dicom", "-o", out, "--allow-transcode", check=0)
    [series] = [p for p in out.iterdir() if p.is_dir()]
    assert found_needles(all_files(out), NEEDLES) == {}
    with openslide.OpenSlide(str(slide)) as a, openslide.OpenSlide(str(sorted(series.iterdir())[0])) as b:
        assert b.properties["openslide.vendor"] == "dicom"
        assert a.level_dimensions == b.level_dimensions
        assert "label" not in b.associated_images


def test_identifiers_in_unusual_places_of_slidedat(slide, tmp_path):
    """Text in layer and level names, section names, comments, typed keys and unknown
    [HIERARCHICAL] keys; SLIDE_ID repeated inside a kept value; a line over 100 characters."""
    src = broken_copy(slide, tmp_path)
    long_name = "Plan-Apochromat 20x/0.8 " + "M27 " * 30
    set_key(src, "HIER_1_VAL_0 = FilterLevel_0", "HIER_1_VAL_0 = MRXS-HIERVAL-QUACK")
    set_key(src, "HIER_1_NAME = Slide filter level", "HIER_1_NAME = MRXS-HIERNAME-QUACK")
    set_key(src, "LAYER_1_LEVEL_0_SECTION", "SMITH-JOHN-MRXS-SECTION")
    set_key(src, "IMAGE_QUALITY = 90", "IMAGE_QUALITY = MRXS-TYPED-QUACK")
    set_key(src, "INDEXFILE = Index.dat", "INDEXFILE = Index.dat\r\nHIER_NOTE = MRXS-HIERNOTE-QUACK\r\n"
                                           "# scanned by MRXS-COMMENT-QUACK")
    set_key(src, "OBJECTIVE_NAME = Plan-Apochromat",
            f"OBJECTIVE_NAME = {long_name}{PLANTED['slide_id']}")
    set_key(src, "CAMERA_TYPE = CIS VCC-FC60FR19CL", f"CAMERA_TYPE = CIS {PLANTED['slide_name']}")
    planted = ["MRXS-HIERVAL-QUACK", "MRXS-HIERNAME-QUACK", "SMITH-JOHN-MRXS-SECTION",
               "MRXS-TYPED-QUACK", "MRXS-HIERNOTE-QUACK", "MRXS-COMMENT-QUACK"]
    with openslide.OpenSlide(str(src)) as s:   # still a slide OpenSlide reads
        assert s.level_count == 4
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    assert found_needles(all_files(out), planted + NEEDLES) == {}
    mrxs = output_slide(out)
    ini = Slidedat.parse((mrxs.with_suffix("") / "Slidedat.ini").read_bytes()).sections
    hier = ini["HIERARCHICAL"]
    assert (hier["HIER_1_NAME"], hier["HIER_1_VAL_0"]) == ("Layer 1", "Level_0")
    assert hier["HIER_1_VAL_0_SECTION"] == "LAYER_1_LEVEL_0_SECTION"
    assert ini["LAYER_1_LEVEL_0_SECTION"] == {"FILTER_NAME": "RGB"}
    assert "IMAGE_QUALITY" not in ini["LAYER_0_LEVEL_0_SECTION"]
    # an objective's name holds words of objective names: not the slide's identifier
    assert "OBJECTIVE_NAME" not in ini["GENERAL"]
    assert "CAMERA_TYPE" not in ini["GENERAL"]    # it repeated the slide name
    with openslide.OpenSlide(str(slide)) as a, openslide.OpenSlide(str(mrxs)) as b:
        assert a.level_dimensions == b.level_dimensions


def test_unreadable_records_that_are_dropped_anyway_and_extra_files(slide, tmp_path):
    """Like OpenSlide, only records that are needed must be readable: a broken label record is
    dropped with a warning; a broken preview (kept) is refused. Extra files in the folder are
    not part of the output."""
    src = broken_copy(slide, tmp_path)
    folder = src.with_suffix("")
    (folder / "Notes-MRXS-EXTRA-QUACK.txt").write_text("MRXS-EXTRA-QUACK")
    index = folder / "Index.dat"
    data = bytearray(index.read_bytes())
    nonhier_table = struct.unpack_from("<i", data, 41)[0]
    label_head = struct.unpack_from("<i", data, nonhier_table + 4)[0]      # record 1: the label
    struct.pack_into("<i", data, label_head, 7)                             # head page not empty
    index.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, check=0)
    assert "non-hierarchical record 1" in proc.stderr and "warning" in proc.stderr
    assert found_needles(all_files(out), ["MRXS-EXTRA-QUACK"]) == {}
    assert sorted(p.name for p in output_slide(out).with_suffix("").iterdir()) == [
        "Data0000.dat", "Data0001.dat", "Index.dat", "Slidedat.ini"]
    out2 = tmp_path / "out2"
    proc = run("deid", src, "-o", out2, "--label", "keep")
    assert proc.returncode == 2 and "non-hierarchical record 1" in proc.stderr


def test_overlapping_camera_photos_with_stitching_positions(tmp_path):
    """Camera photos split into 2x2 images that overlap, positions zlib-compressed in
    StitchingIntensityLayer (OpenSlide's other position source): geometry and pixels unchanged."""
    src = write_mrxs(tmp_path / "stitched.mrxs",
                     MrxsSpec(images_x=8, images_y=8, divisions=2, overlap=12, stitching=True))
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    mrxs = output_slide(out)
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(mrxs)) as b:
        assert a.level_dimensions == b.level_dimensions == ((2012, 2012), (1006, 1006), (503, 503), (251, 251))
        for level in range(a.level_count):
            assert np.array_equal(pixels(a, level), pixels(b, level)), level
    ini = Slidedat.parse((mrxs.with_suffix("") / "Slidedat.ini").read_bytes()).sections
    assert ini["GENERAL"]["CameraImageDivisionsPerSide"] == "2"
    assert ini["HIERARCHICAL"]["NONHIER_1_NAME"] == "StitchingIntensityLayer"
    assert found_needles(all_files(out), NEEDLES) == {}


def test_png_levels_lose_their_text_chunks(tmp_path):
    src = write_mrxs(tmp_path / "png.mrxs", MrxsSpec(image_format="PNG", levels=3))
    planted = found_needles(all_files(src.with_suffix("")), [PLANTED["tile_comment"]])
    assert list(planted.values()) == [[PLANTED["tile_comment"]]]   # in one tile's tEXt chunk
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    mrxs = output_slide(out)
    assert found_needles(all_files(out), NEEDLES) == {}
    with openslide.OpenSlide(str(src)) as a, openslide.OpenSlide(str(mrxs)) as b:
        assert a.level_dimensions == b.level_dimensions
        for level in range(a.level_count):
            assert np.array_equal(pixels(a, level), pixels(b, level)), level


def test_upper_case_extension_and_symlinked_folder_are_refused_clearly(slide, tmp_path):
    upper = broken_copy(slide, tmp_path)
    renamed = upper.with_name("S26-PLANT-0815.MRXS")
    upper.rename(renamed)
    assert_mrxs_rejected(renamed, "must end in .mrxs, in lower case")
    linked = tmp_path / "linked" / "L.mrxs"
    linked.parent.mkdir()
    linked.write_bytes(b"")
    os.symlink(slide.with_suffix(""), linked.with_suffix(""))
    assert_mrxs_rejected(linked, "is a symbolic link")


def test_full_disk_leaves_nothing_and_the_input_untouched(slide, tmp_path):
    """A full disk, simulated with a file-size limit (EFBIG, like ENOSPC, in the data copy)."""
    import resource
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    src = broken_copy(slide, tmp_path)
    before = tree_hashes(src)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "wsideid", "deid", str(src), "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # the output is the problem, not the input: the error names the output folder
    assert str(out) in proc.stderr and str(src) not in proc.stderr
    assert "too large" in proc.stderr.lower() and proc.stderr.count("\n") == 1
    assert tree_hashes(src) == before
    assert [p.name for p in out.iterdir()] in ([], ["wsideid-report.json"])


def test_errors_do_not_quote_the_slide(slide, tmp_path):
    """A zoom level section the slide names but does not have, and a count that holds text:
    the error names neither the section nor the value (failures go into the audit report)."""
    src = broken_copy(slide, tmp_path)
    set_key(src, "LAYER_0_LEVEL_2_SECTION", "DOE-JOHN-SECTION")
    set_key(src, "[DOE-JOHN-SECTION]", "[SOMETHING_ELSE]")
    assert_mrxs_rejected(src, "section (a name [HIERARCHICAL] refers to) is missing")
    src2 = tmp_path / "two"
    src2.mkdir()
    other = write_mrxs(src2 / "S26-OTHER-0815.mrxs", MrxsSpec(plant=False))
    set_key(other, "IMAGENUMBER_X = 8", "IMAGENUMBER_X = DOE-JANE-COUNT")
    assert_mrxs_rejected(other, "IMAGENUMBER_X in section [GENERAL] is not a whole number")
    for case in (tmp_path / "case" / "out", src2 / "out"):
        assert found_needles(all_files(case), ["DOE-JOHN-SECTION", "DOE-JANE-COUNT"]) == {}


def test_verification_refuses_an_output_with_dropped_bytes_left(slide, tmp_path, monkeypatch):
    """If the writer forgot to zero the dropped records, verification finds them (header text
    and non-zero unreferenced bytes) and nothing is released."""
    from wsideid import pipeline
    from wsideid.containers.files import DirectWrites
    from wsideid.containers.output import Target
    from wsideid.errors import VerificationError
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy

    monkeypatch.setattr(DirectWrites, "zero_gaps", lambda self, starts, ends: 0)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(VerificationError, match="belong to no kept record and are not zero"):
        pipeline.run(Job((slide,), "mirax"),
                     pipeline.Settings(Policy(), Keyring(b"k" * 32), Target(out)))
    assert list(out.iterdir()) == []
