"""End to end through the CLI on synthetic SVS slides with planted identifiers."""
from __future__ import annotations

import csv
import json
import shutil
import struct
from pathlib import Path

import openslide
import pytest
import tifffile

from conftest import all_files, found_needles, run, sha256, stored_runs
from fixtures.svs import APPMAG, MPP, PLANTED, SvsSpec, write_svs

VARIANTS = {
    "classic": SvsSpec(),
    "bigtiff": SvsSpec(bigtiff=True),
    "big-endian": SvsSpec(byteorder=">"),
    "gt450": SvsSpec(gt450=True),
    "j2k": SvsSpec(codec="j2k"),
    "bigtiff-big-endian-j2k": SvsSpec(bigtiff=True, byteorder=">", codec="j2k"),
}
NEEDLES = list(PLANTED.values())


def raw_runs(path: Path) -> list[list[bytes]]:
    """The stored bytes of every tile of every tiled (pyramid) IFD, in order."""
    with tifffile.TiffFile(path) as tf:
        return [stored_runs(tf.filehandle, page) for page in tf.pages if page.is_tiled]


def without_comment(stream: bytes, text: bytes) -> bytes:
    at = stream.find(text)
    assert at > 0, "fixture lost its planted comment"
    # JPEG COM: FF FE len(2) text ; J2K COM: FF 64 len(2) Rcom(2) text
    head = 4 if stream[at - 4:at - 2] == b"\xff\xfe" else 6
    return stream[:at - head] + stream[at + len(text):]


@pytest.fixture(params=list(VARIANTS), scope="module")
def deidentified(request, tmp_path_factory):
    spec = VARIANTS[request.param]
    work = tmp_path_factory.mktemp(request.param)
    src = write_svs(work / f"{PLANTED['accession']}.svs", spec)
    before = sha256(src)
    out = work / "out"
    mapping = work / "map.csv"
    proc = run("deid", src, "-o", out, "--map", mapping, check=0)
    return spec, src, before, out, mapping, proc


def test_no_planted_identifier_survives(deidentified):
    spec, src, before, out, mapping, proc = deidentified
    files = all_files(out)
    slides = [p for p in files if p.suffix == ".svs"]
    assert len(slides) == 1
    assert found_needles(files, NEEDLES) == {}
    # the fixture really did hold them all (GT450 label/macro have no descriptions)
    expected = set(NEEDLES)
    if spec.gt450:
        expected -= {PLANTED["label_barcode"], PLANTED["macro_text"]}
    if spec.codec == "j2k":
        expected.discard(PLANTED["tables_app"])  # J2K levels have no JPEGTables
    assert set(found_needles([src], NEEDLES)[str(src)]) == expected


def test_input_untouched_and_mapped(deidentified):
    spec, src, before, out, mapping, proc = deidentified
    assert sha256(src) == before
    rows = list(csv.DictReader(mapping.open()))
    assert rows[0]["source"] == str(src.resolve())
    assert Path(rows[0]["output"]).parent == out.resolve() or Path(rows[0]["output"]).parent == out
    assert rows[0]["pseudonym"] in Path(rows[0]["output"]).name
    assert PLANTED["accession"] not in rows[0]["output"]


def test_pyramid_tiles_byte_identical(deidentified):
    spec, src, before, out, mapping, proc = deidentified
    [dst] = [p for p in out.iterdir() if p.suffix == ".svs"]
    a, b = raw_runs(src), raw_runs(dst)
    assert [len(x) for x in a] == [len(x) for x in b] and len(a) == spec.levels
    comment = PLANTED["tile_comment"].encode()
    a[0][0] = without_comment(a[0][0], comment)  # the one tile that carried a COM segment
    assert a == b


def test_reader_sees_same_slide_without_label_or_macro(deidentified):
    spec, src, before, out, mapping, proc = deidentified
    [dst] = [p for p in out.iterdir() if p.suffix == ".svs"]
    with tifffile.TiffFile(dst) as tf:
        desc = tf.pages[0].description
        assert desc.startswith("Aperio")
        assert f"AppMag = {APPMAG}" in desc and f"MPP = {MPP}" in desc
        assert len(tf.pages) == spec.levels + 1  # levels + thumbnail
        for page in tf.pages:
            page.asarray()  # every kept image still decodes
    if spec.byteorder == ">":
        return  # OpenSlide 4.0.1 does not open big-endian TIFF at all; tifffile checked above
    with openslide.OpenSlide(str(src)) as s_in, openslide.OpenSlide(str(dst)) as s_out:
        assert s_out.properties["openslide.vendor"] == "aperio"
        assert s_out.level_dimensions == s_in.level_dimensions
        for key in ("openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power"):
            assert s_out.properties[key] == s_in.properties[key]
        assert {"label", "macro"} <= set(s_in.associated_images)
        assert set(s_out.associated_images) == {"thumbnail"}
        w, h = s_in.level_dimensions[0]
        assert s_out.read_region((0, 0), 0, (w, h)).tobytes() == s_in.read_region((0, 0), 0, (w, h)).tobytes()


def test_report_has_options_and_no_values(deidentified):
    spec, src, before, out, mapping, proc = deidentified
    report_path = out / "wsideid-report.json"
    assert found_needles([report_path], NEEDLES) == {}
    report = json.loads(report_path.read_text())
    assert report["options"]["dates"] == "remove" and report["options"]["label"] == "drop"
    [slide] = report["slides"]
    assert slide["status"] == "ok"
    names = {f["name"] for f in slide["fields"] if f["action"] == "remove"}
    assert {"aperio:Filename", "aperio:User", "aperio:ScanScope ID", "tiff:Artist",
            "aperio:(not in the catalog)", "codestream:COM"} <= names
    assert "Secret Key" not in report_path.read_text()   # an unknown key is not named
    assert any(f["name"] == "jpeg:APP5" for f in slide["fields"]) or spec.codec == "j2k"


def test_label_and_macro_kept_when_asked(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--label", "keep", "--macro", "keep", "--no-ocr", check=0)
    [dst] = out.glob("*.svs")
    with openslide.OpenSlide(str(dst)) as s:
        assert {"label", "macro", "thumbnail"} == set(s.associated_images)
    # the images stay, but what their descriptions said does not
    assert found_needles([dst], NEEDLES) == {}
    report = json.loads((out / "wsideid-report.json").read_text())
    assert report["options"]["label"] == "keep" and report["options"]["macro"] == "keep"


def test_dates_shift_consistently_with_a_key(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    key = tmp_path / "secret.key"
    outs = []
    for run_no in range(2):
        out = tmp_path / f"out{run_no}"
        run("deid", src, "-o", out, "--dates", "shift", "--key-file", key, check=0)
        [dst] = out.glob("*.svs")
        outs.append(dst)
    assert outs[0].name == outs[1].name  # same key, same pseudonym
    with tifffile.TiffFile(outs[0]) as tf:
        desc = tf.pages[0].description
        dt = tf.pages[0].tags["DateTime"].value
    date = desc.split("|Date = ")[1].split("|")[0]
    assert date != PLANTED["date_aperio"] and len(date) == 8
    from datetime import datetime
    aperio = datetime.strptime(date, "%m/%d/%y").date()
    tiff = datetime.strptime(dt[:10], "%Y:%m:%d").date()
    assert aperio == tiff  # both moved by the same number of days
    assert f"Time = {PLANTED['time']}" in desc
    assert found_needles([outs[0]], [PLANTED["date_aperio"], PLANTED["date_tiff"]]) == {}


def test_dates_keep_year(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--dates", "keep-year", check=0)
    [dst] = out.glob("*.svs")
    with tifffile.TiffFile(dst) as tf:
        desc = tf.pages[0].description
        assert "|Date = 01/01/21" in desc and "Time =" not in desc
        assert tf.pages[0].tags["DateTime"].value == "2021:01:01 00:00:00"


def test_keep_device_id(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    out = tmp_path / "out"
    run("deid", src, "-o", out, "--keep-device-id", check=0)
    [dst] = out.glob("*.svs")
    assert found_needles([dst], [PLANTED["serial"]]) == {str(dst): [PLANTED["serial"]]}
    assert found_needles([dst], [PLANTED["user"], PLANTED["filename"]]) == {}


def test_in_place_renames_and_cleans(tmp_path):
    src = write_svs(tmp_path / f"{PLANTED['accession']}.svs")
    tiles_before = raw_runs(src)
    proc = run("deid", src, "--in-place", check=0)
    assert not src.exists()
    [dst] = tmp_path.glob("wsi-*.svs")
    assert found_needles(all_files(tmp_path), NEEDLES) == {}
    tiles_before[0][0] = without_comment(tiles_before[0][0], PLANTED["tile_comment"].encode())
    assert raw_runs(dst) == tiles_before
    with openslide.OpenSlide(str(dst)) as s:
        assert set(s.associated_images) == {"thumbnail"}
    assert "wsi-" in proc.stdout
    report = json.loads((tmp_path / "wsideid-report.json").read_text())
    assert report["options"]["in_place"] is True and report["slides"][0]["output"] == dst.name


def test_dry_run_writes_nothing(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    before = sha256(src)
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--dry-run", check=0)
    assert not out.exists()
    assert sha256(src) == before
    assert "aperio:Filename" in proc.stdout and "remove" in proc.stdout
    assert PLANTED["user"] not in proc.stdout  # the plan shows actions, not values


def test_map_inside_output_is_refused(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    out = tmp_path / "out"
    proc = run("deid", src, "-o", out, "--map", out / "map.csv", check=2)
    assert "outside" in proc.stderr
    assert not any(out.glob("*.svs"))


def test_trailing_and_orphaned_bytes_are_cleaned(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    with open(src, "ab") as fh:
        fh.write(b"\x00" * 7 + b"SLACK-SPACE-QUACK" + b"\x00" * 100)
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    [dst] = out.glob("*.svs")
    assert found_needles([dst], ["SLACK-SPACE-QUACK"]) == {}


def test_inspect_json_lists_values_and_actions(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    proc = run("inspect", src, "--json", check=0)
    doc = json.loads(proc.stdout)
    roles = [img["role"] for img in doc["images"]]
    assert roles == ["level", "thumbnail", "level", "label", "macro"]
    by_name = {(f["name"], f["location"]): f for f in doc["fields"]}
    user = by_name[("aperio:User", "IFD 0 ImageDescription")]
    assert user["value"] == PLANTED["user"] and user["action"] == "remove"
    assert by_name[("aperio:MPP", "IFD 0 ImageDescription")]["action"] == "keep"
    assert by_name[("tiff:Artist", "IFD 0 tag 315")]["action"] == "remove"


def test_scan_finds_residue_in_input_and_none_in_output(tmp_path):
    src = write_svs(tmp_path / "in.svs")
    needles = tmp_path / "needles.txt"
    needles.write_text("\n".join([PLANTED["user"], PLANTED["accession"]]) + "\n")
    proc = run("scan", src, "--needles", needles, check=1)
    assert "label image present" in proc.stdout and "aperio:User" in proc.stdout
    assert "found in the raw bytes" in proc.stdout
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    [dst] = out.glob("*.svs")
    proc = run("scan", dst, "--needles", needles, check=0)
    assert "clean" in proc.stdout


def test_folder_input_and_batch_continues_after_failure(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    write_svs(folder / "a.svs")
    write_svs(folder / "b.svs", SvsSpec(codec="j2k"))
    broken = folder / "c.svs"
    shutil.copy(folder / "a.svs", broken)
    with open(broken, "r+b") as fh:
        fh.truncate(broken.stat().st_size // 3)
    out = tmp_path / "out"
    proc = run("deid", folder, "-o", out)
    assert proc.returncode == 1     # a slide found in a folder failed; the others were released
    assert "c.svs" in proc.stderr and "1 of 3 slides failed" in proc.stderr
    assert len(list(out.glob("*.svs"))) == 2
    assert not list(out.glob(".*partial"))
    report = json.loads((out / "wsideid-report.json").read_text())
    assert report["summary"] == {"ok": 2, "failed": 1}


def test_text_hidden_after_the_nul_of_a_kept_string_is_removed(tmp_path):
    # the description of a clean slide is kept as is, so only the rule about bytes after the
    # NUL can catch this
    src = write_svs(tmp_path / "in.svs", SvsSpec(plant=False, label=False, macro=False))
    hidden = b"HIDDEN-AFTER-NUL-QUACK"
    with tifffile.TiffFile(src) as tf:
        tag = tf.pages[0].tags["ImageDescription"]
        desc = tf.pages[0].description.encode()
    # re-point the description at a longer value: "<description>\0HIDDEN...\0"
    with open(src, "r+b") as fh:
        fh.seek(0, 2)
        new_at = fh.tell()
        value = desc + b"\x00" + hidden + b"\x00"
        fh.write(value)
        fh.seek(tag.offset + 4)
        fh.write(struct.pack("<II", len(value), new_at))
    assert found_needles([src], [hidden.decode()])
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    [dst] = out.glob("*.svs")
    assert found_needles([dst], [hidden.decode()]) == {}
    with tifffile.TiffFile(dst) as tf:
        assert tf.pages[0].description.encode() == desc


def test_report_never_names_what_the_slide_made_up(tmp_path):
    """An unknown Aperio key or a fragment without '=' is the slide's own text: the report
    says a field outside the catalog was removed, without its name."""
    import numpy as np
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    src = tmp_path / "odd.svs"
    desc = ("Aperio Image Library v12.0.5\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=70"
            "|AppMag = 20|MPP = 0.499|DOE-JOHN-KEYNAME = 1|DOE-JANE-FRAGMENT")
    with tifffile.TiffWriter(src) as tw:
        tw.write(img, tile=(256, 256), compression="jpeg", photometric="rgb", description=desc,
                 metadata=None)
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    report = (out / "wsideid-report.json").read_text()
    assert found_needles(all_files(out), ["DOE-JOHN-KEYNAME", "DOE-JANE-FRAGMENT"]) == {}
    assert report.count('"aperio:(not in the catalog)"') == 2
