"""DICOM WSI de-identification end to end on the real series in ../shared/slides/dicom."""
from __future__ import annotations

import json

import shutil
from pathlib import Path

import openslide
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import all_files, found_needles, run, sha256, shared_slide
from pydicom.encaps import generate_frames

from wsideid.verify.dicom import dciodvfy_errors


def _frames(ds) -> list[bytes]:
    """Frames as pydicom reads them (an independent reader of what we copied)."""
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    return [bytes(ds.PixelData)]


REAL = {
    "gcp-jpeg2000-volume": ["GenLast", "Penelope", "PN-1-692-287-590-758-1", "16340811",
                            "GO-1692287590758", "Camelyon16", "16730303", "tumor_102",
                            "1.3.6.1.4.1.11129.5.7.999.18649109954048068.909.1692287590758018"],
    "highdicom-sm": ["Test^Patient", "AA01", "17890505", "S19-1_A_1_1", "Test^Physician",
                     "test.org/mrns", "test.org/specimens",
                     "20190604", "1.2.826.0.1.3680043.9.7433.3.82970457260936734119270346325882945"],
    "openslide-boxes": ["20091229", "SLIDE_1", "CPAPERIOCS",
                        "1.3.6.1.4.1.5962.99.1.1747645553.419656796.1689669825649.5.0"],
}


def series_copy(tmp_path: Path, name: str) -> Path:
    src = tmp_path / "in" / name
    shutil.copytree(shared_slide(f"dicom/{name}"), src)
    return src


def outputs(out: Path) -> list[Path]:
    return sorted(out.glob("wsi-*/*.dcm"))


@pytest.mark.parametrize("name", list(REAL))
def test_real_dicom_series(tmp_path, name):
    src = series_copy(tmp_path, name)
    before = {p.name: sha256(p) for p in src.iterdir()}
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    assert {p.name: sha256(p) for p in src.iterdir()} == before
    files = outputs(out)
    inputs = sorted(src.glob("*.dcm"))
    assert len(files) == len(inputs)
    assert found_needles(all_files(out), REAL[name]) == {}
    for src_file, dst_file in zip(inputs, files):
        a, b = pydicom.dcmread(src_file), pydicom.dcmread(dst_file)
        assert b.PatientIdentityRemoved == "YES"
        assert "113100" in [item.CodeValue for item in b.DeidentificationMethodCodeSequence]
        assert not any(e.tag.is_private for e in b.iterall())
        assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID != a.SOPInstanceUID
        assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
        assert _frames(b) == _frames(a)  # every frame byte-identical
        assert (dciodvfy_errors(dst_file) or set()) <= (dciodvfy_errors(src_file) or set())
    with openslide.OpenSlide(str(inputs[0])) as a, openslide.OpenSlide(str(files[0])) as b:
        assert b.properties["openslide.vendor"] == "dicom"
        assert b.level_dimensions == a.level_dimensions
    if name != "gcp-label-datamatrix":
        assert wsidicom_levels(files[0].parent) == wsidicom_levels(src)


def wsidicom_levels(folder: Path) -> list[tuple[int, int]]:
    """What wsidicom, the DICOM WSI library, sees: every level's size, and a tile decodes."""
    from wsidicom import WsiDicom

    with WsiDicom.open(folder) as wsi:
        wsi.read_tile(0, (0, 0))
        return [(level.size.width, level.size.height) for level in wsi.levels]


def test_uids_consistent_across_the_series_and_runs(tmp_path):
    src = series_copy(tmp_path, "openslide-boxes")
    key = tmp_path / "key"
    uids = []
    for n in range(2):
        out = tmp_path / f"out{n}"
        run("deid", src, "-o", out, "--key-file", key, check=0)
        dss = [pydicom.dcmread(p) for p in outputs(out)]
        assert len({ds.StudyInstanceUID for ds in dss}) == 1
        assert len({ds.SeriesInstanceUID for ds in dss}) == 1
        assert len({ds.FrameOfReferenceUID for ds in dss}) == 1
        uids.append(sorted(ds.SOPInstanceUID for ds in dss))
        originals = [pydicom.dcmread(p) for p in sorted(src.glob("*.dcm"))]
        assert dss[0].StudyInstanceUID != originals[0].StudyInstanceUID
        assert dss[0].ContainerIdentifier != originals[0].ContainerIdentifier
    assert uids[0] == uids[1]


def test_label_series_is_dropped_by_default_and_not_kept_when_it_shows_a_barcode(tmp_path):
    """The real LABEL instance is a Data Matrix: it is decoded and reported (symbology only),
    and asking to keep it does not release it; with --strict the slide fails."""
    src = series_copy(tmp_path, "gcp-label-datamatrix")
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    assert outputs(out) == []
    inspect = json.loads(run("inspect", next(src.glob("*.dcm")), "--json", check=0).stdout)
    codes = [f for f in inspect["fields"] if f["name"].startswith("barcode:")]
    assert [f["name"] for f in codes] == ["barcode:DataMatrix"] and codes[0]["action"] == "remove"
    out2 = tmp_path / "out2"
    proc = run("deid", src, "-o", out2, "--label", "keep", check=0)
    assert outputs(out2) == [] and "shows a barcode (DataMatrix)" in proc.stderr
    assert "dropped instead of kept" in proc.stderr
    report = (out2 / "wsideid-report.json").read_text()
    assert "barcode:DataMatrix" in report and codes[0]["value"] not in report
    proc = run("deid", src, "-o", tmp_path / "out3", "--label", "keep", "--strict", check=2)
    assert "--strict" in proc.stderr


def test_planted_nested_private_and_file_meta(tmp_path):
    folder = tmp_path / "CASE-QUACK-42"
    folder.mkdir()
    ds = pydicom.dcmread(shared_slide("dicom/highdicom-sm/sm_image.dcm"))
    ds.OperatorsName = "OPERATOR^QUACK"
    ds.LabelText = "LABELTEXT-QUACK"
    ds.BarcodeValue = "BARCODE-QUACK"
    spec = ds.SpecimenDescriptionSequence[0]
    spec.SpecimenShortDescription = "SPECDESC-QUACK"
    step = Dataset()
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "PREP-TEXT-QUACK"
    step.SpecimenPreparationStepContentItemSequence = Sequence([item])
    spec.SpecimenPreparationSequence = Sequence([step])
    ds.add_new((0x0011, 0x0010), "LO", "QUACKCORP")
    ds.add_new((0x0011, 0x1001), "LO", "PRIVATE-QUACK")
    ds.file_meta.SourceApplicationEntityTitle = "AEQUACK"
    path = folder / "S26-QUACK.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    needles = ["OPERATOR^QUACK", "LABELTEXT-QUACK", "BARCODE-QUACK", "SPECDESC-QUACK",
               "PREP-TEXT-QUACK", "QUACKCORP", "PRIVATE-QUACK", "AEQUACK", "CASE-QUACK",
               "S26-QUACK", "Test^Patient"]
    assert set(needles) - {"CASE-QUACK", "S26-QUACK"} <= set(found_needles([path], needles)[str(path)])
    assert found_needles(all_files(out), needles) == {}
    [dst] = outputs(out)
    assert (dciodvfy_errors(dst) or set()) <= (dciodvfy_errors(path) or set())


def test_two_series_in_one_folder_are_two_slides(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(shared_slide("dicom/highdicom-sm/sm_image.dcm"), folder / "a.dcm")
    for p in shared_slide("dicom/openslide-boxes").glob("*.dcm"):
        shutil.copy(p, folder / p.name)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    assert len(list(out.glob("wsi-*"))) == 2


def test_truncated_dicom_is_an_error(tmp_path):
    folder = series_copy(tmp_path, "highdicom-sm")
    path = next(folder.glob("*.dcm"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    proc = run("deid", folder, "-o", out)
    assert proc.returncode == 2 and str(path) in proc.stderr   # the run's only slide: bad input
    assert not list(out.glob("wsi-*")) and not list(out.glob(".*partial"))


def test_comment_segment_in_a_frame_is_removed(tmp_path):
    from pydicom.encaps import encapsulate

    folder = tmp_path / "series"
    folder.mkdir()
    ds = pydicom.dcmread(shared_slide("dicom/openslide-boxes/boxes_0.dcm"))
    [frame] = _frames(ds)
    text = b"FRAME-COMMENT-QUACK"
    dirty = frame[:2] + b"\xff\xfe" + len(text + b"xx").to_bytes(2, "big") + text + frame[2:]
    ds.PixelData = encapsulate([dirty])
    ds.save_as(folder / "x.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    [dst] = outputs(out)
    assert found_needles([dst], [text.decode()]) == {}
    [clean] = _frames(pydicom.dcmread(dst))
    assert clean.rstrip(b"\x00") == frame.rstrip(b"\x00")


def test_instance_without_image_type_refuses_the_slide(tmp_path):
    """An instance whose role cannot be told is not skipped silently: the slide is refused."""
    folder = tmp_path / "odd"
    folder.mkdir()
    ds = pydicom.dcmread(shared_slide("dicom/highdicom-sm/sm_image.dcm"))
    del ds.ImageType
    ds.save_as(folder / "x.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    proc = run("deid", folder, "-o", out, check=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsideid: error:")]
    assert len(errors) == 1 and "ImageType" in errors[0], proc.stderr
    assert outputs(out) == []


def test_scan_flags_the_input_and_passes_the_output(tmp_path):
    src = series_copy(tmp_path, "highdicom-sm")
    proc = run("scan", src, check=1)
    assert "PatientName" in proc.stdout
    out = tmp_path / "out"
    run("deid", src, "-o", out, check=0)
    proc = run("scan", out, check=0)
    assert "clean" in proc.stdout


def test_verification_reads_the_written_frames(tmp_path):
    """Verification checks the output's frame items where the copy must have put them: a frame
    changed after writing, or an item tag moved, is found."""
    import struct

    from wsideid import adapters
    from wsideid.containers.output import Target
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy
    from wsideid.verify import verify

    files = tuple(sorted(shared_slide("dicom/openslide-boxes").glob("*.dcm")))
    dicom = adapters.by_name("dicom-wsi")
    series = dicom.read(Job(files, dicom.name))
    naming = dicom.naming(series, Keyring(b"k" * 32))
    writer = dicom.writer(series, naming, Target(tmp_path))
    plan = dicom.plan(series, Policy(), naming)
    written = writer.finish(plan)
    check = lambda: verify(dicom, series, plan, written, Policy(), naming, None)  # noqa: E731
    assert check() == []
    planned, out = plan.output[0], written.paths[0]
    shift = out.stat().st_size - planned.pixels.end     # pixel data is last in both files
    first = int(planned.pixels.frame_offsets[0]) + shift
    data = bytearray(out.read_bytes())
    data[first + 20] ^= 0xFF                           # one byte of the first frame
    out.write_bytes(bytes(data))
    assert any("differs" in p for p in check())
    data[first + 20] ^= 0xFF
    struct.pack_into("<I", data, first - 4, int(planned.pixels.frame_lengths[0]) + 2)  # item length
    out.write_bytes(bytes(data))
    assert any("not where expected" in p for p in check())


def test_text_in_the_file_preamble_is_not_copied(tmp_path):
    """The 128 bytes before DICM are free for applications (PS3.10 7.1) and pydicom writes
    back what it read: the output's preamble is zero."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in shared_slide("dicom/openslide-boxes").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.preamble = b"PREAMBLE-DOE-QUACK".ljust(128, b"\x00")
        ds.save_as(folder / p.name, enforce_file_format=True)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    assert found_needles(all_files(out), ["PREAMBLE-DOE-QUACK"]) == {}
    for f in out.rglob("*.dcm"):
        assert f.read_bytes()[:132] == bytes(128) + b"DICM"


def test_file_meta_keeps_only_what_readers_need(tmp_path):
    """AE titles, the source's implementation name and Private Information (0002,0102) in
    the file meta are removed; pydicom writes its own implementation identity."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in shared_slide("dicom/openslide-boxes").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.file_meta.SourceApplicationEntityTitle = "FM-AE-DOEHOSP"
        ds.file_meta.ImplementationVersionName = "FM-IMPL-DOE"
        ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
        ds.file_meta.PrivateInformation = b"FM-PRIVATE-DOE-QUACK"
        ds.save_as(folder / p.name, enforce_file_format=True)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    assert found_needles(all_files(out), ["FM-AE-DOEHOSP", "FM-IMPL-DOE", "FM-PRIVATE-DOE-QUACK"]) == {}
    for f in out.rglob("*.dcm"):
        meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
        assert {int(e.tag) for e in meta} <= {0x00020000, 0x00020001, 0x00020002, 0x00020003,
                                               0x00020010, 0x00020012, 0x00020013}


def test_free_text_the_table_does_not_list_is_emptied(tmp_path):
    """PS3.15 Table E.1-1 does not list every free-text attribute (OpticalPathDescription,
    ContentDescription, AcquisitionContextDescription...): such text is emptied, code
    sequences and required names stay, and dciodvfy finds no new error. A public element in
    no dictionary is removed."""
    from pydicom.dataelem import DataElement

    folder = tmp_path / "in"
    folder.mkdir()
    for p in shared_slide("dicom/openslide-boxes").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        if "OpticalPathSequence" in ds:
            ds.OpticalPathSequence[0].OpticalPathDescription = "STD-OPTPATH-DOE"
        ds.ContentDescription = "STD-CONTENTDESC-DOE"
        ds.AcquisitionContextDescription = "STD-ACQCTX-DOE"
        ds.add(DataElement(0x00089999, "UN", b"UNKNOWN-PUBLIC-DOE"))   # in no dictionary
        ds.ExpiryDate = "20210314"                                      # a date the table omits
        ds.save_as(folder / p.name, enforce_file_format=True)
    out = tmp_path / "out"
    run("deid", folder, "-o", out, check=0)
    assert found_needles(all_files(out), ["STD-OPTPATH-DOE", "STD-CONTENTDESC-DOE", "STD-ACQCTX-DOE",
                                          "UNKNOWN-PUBLIC-DOE", "20210314"]) == {}
    source = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    checked = 0
    for f in out.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.Manufacturer == source.Manufacturer
        if "OpticalPathSequence" in ds:   # coded values and the path's identifier stay
            path, was = ds.OpticalPathSequence[0], source.OpticalPathSequence[0]
            assert path.OpticalPathIdentifier == was.OpticalPathIdentifier
            assert (path.IlluminationTypeCodeSequence[0].CodeMeaning
                    == was.IlluminationTypeCodeSequence[0].CodeMeaning == "Brightfield illumination")
            assert not path.get("OpticalPathDescription")
            checked += 1
    assert checked >= 1


def test_verification_replans_the_output_like_any_slide(tmp_path):
    """A DICOM output is planned again like every other format: a patient's name or an
    institution put back into a written header is found by the re-plan."""
    import pydicom

    from wsideid import adapters
    from wsideid.containers.output import Target
    from wsideid.keyring import Keyring
    from wsideid.model import Job
    from wsideid.policy import Policy
    from wsideid.verify import verify

    files = tuple(sorted(shared_slide("dicom/openslide-boxes").glob("*.dcm")))
    dicom = adapters.by_name("dicom-wsi")
    series = dicom.read(Job(files, dicom.name))
    naming = dicom.naming(series, Keyring(b"k" * 32))
    plan = dicom.plan(series, Policy(), naming)
    written = dicom.writer(series, naming, Target(tmp_path)).finish(plan)
    assert verify(dicom, series, plan, written, Policy(), naming, None) == []
    out = written.paths[0]
    ds = pydicom.dcmread(out)
    ds.InstitutionName = "ST ELSEWHERE HOSPITAL"
    ds.save_as(out, enforce_file_format=True)
    problems = verify(dicom, series, plan, written, Policy(), naming, None)
    assert any("InstitutionName is still present" in p for p in problems), problems


def test_a_copy_of_an_instance_in_another_folder_refuses_its_series(tmp_path):
    """Instances of one series spread over folders are one slide; a file copied into a second
    folder is then the same instance twice, which was released twice under one
    SOPInstanceUID (third stranger attack). The series is refused, the other one released."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    boxes = shared_slide("dicom/openslide-boxes")
    for path in boxes.glob("*.dcm"):
        shutil.copy(path, src / "a" / path.name)
    shutil.copy(boxes / "boxes_0.dcm", src / "b" / "copy.dcm")
    shutil.copy(shared_slide("dicom/highdicom-sm/sm_image.dcm"), src / "b" / "other.dcm")
    key = tmp_path / "key"
    proc = run("deid", src, "-o", tmp_path / "out", "--key-file", key)
    assert proc.returncode == 1, proc.stderr
    assert "are the same instance (one SOPInstanceUID)" in proc.stderr
    released = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    assert len(released) == 1 and "SM" in str(released[0].Modality)
