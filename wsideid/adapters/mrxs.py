"""3DHistech MIRAX: `NAME.mrxs` plus the folder `NAME/` with Slidedat.ini, Index.dat and the
data files (layout: https://openslide.org/formats/mirax/ and OpenSlide's
openslide-vendor-mirax.c, whose checks this adapter repeats so that what it accepts OpenSlide
opens, and what it writes OpenSlide still opens).

Plan: Slidedat.ini key by key through `formats/mirax.toml`; non-hierarchical records (label,
macro, overview, preview, camera positions, anything else) kept or dropped by role, with
their keys and sections renumbered; SLIDE_ID replaced by a keyed value of the same length
everywhere (Slidedat.ini, Index.dat, data file headers); every data file byte that no kept
record points at is zeroed; text segments inside kept images removed.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import catalog
from ..background import Background
from ..containers.files import (
    DirectWrites,
    PlannedWrites,
    Staging,
    Undo,
    copy_file,
    fsync_dir,
    replace_durably,
    start_writeback,
    undo_record_for,
    write_new,
)
from ..containers.mirax.data import DataFileOut, MiraxOutput, finish_data_file
from ..containers.mirax.index import VERSION, IndexFile, Record
from ..containers.mirax.slidedat import (
    DATAFILE,
    GENERAL,
    HIERARCHICAL,
    INDEX_NAME,
    Slidedat,
    data_file_name,
)
from ..containers.output import Target, Written
from ..errors import SlideError
from ..images import codestreams, segments
from ..keyring import Keyring, fingerprint
from ..model import (KEPT, Field, Geometry, Image, Job, Naming, Plan, RedactImage, ReplaceImage,
                     ReplaceRun, Runs)
from ..policy import Policy
from ..sampling import digest, sample
from . import mrxs_positions
from .base import Adapter, Probe, is_regular_file, refuse_shared_bytes
from .mrxs_slidedat import SlidedatPlanner

EXTENSION = ".mrxs"
ZOOM_LAYER = "Slide zoom level"
LEVEL_KEYS = ("IMAGE_CONCAT_FACTOR", "OVERLAP_X", "OVERLAP_Y", "MICROMETER_PER_PIXEL_X",
              "MICROMETER_PER_PIXEL_Y", "IMAGE_FILL_COLOR_BGR", "DIGITIZER_WIDTH",
              "DIGITIZER_HEIGHT", "IMAGE_FORMAT")
IMAGE_ROLES = ("label", "macro", "overview", "thumbnail")
LABEL_KEYS = ("SLIDE_BARCODE", "SLIDE_LABEL", "SLIDE_NAME", "PROJECT_NAME")
TEXT_RUN = re.compile(rb"[\x20-\x7e]{6,}")
TEXT_RUN_UTF16 = re.compile(rb"(?:[\x20-\x7e]\x00){6,}")
MAX_TEXT_SCAN = 1 << 20
MAX_TEXT_FIELDS = 20


@dataclass
class NonhierValue:
    layer: int
    index: int
    layer_name: str
    name: str
    section: str | None
    record: Record | None
    number: int = 0          # position in Index.dat's non-hierarchical table
    role: str = ""           # set by planning: label, macro, ..., geometry or unknown

    @property
    def key(self) -> str:
        return f"{self.layer_name}/{self.name}"


class MiraxSlide:
    """What was read of one MIRAX slide (see `read_slide`)."""

    def __init__(self, path: Path, folder: Path, ini: Slidedat):
        self.path = path
        self.folder = folder
        self.ini = ini
        self.slide_id = ""
        self.images_x = self.images_y = 1
        self.hier_layers: list[tuple[str, list[str | None]]] = []
        self.level_sections: list[str | None] = []
        self.nonhier_layers: list[tuple[int, str, list[tuple[str, str | None]]]] = []
        self.data_paths: list[Path] = []
        self.data_sizes: list[int] = []
        self.index_path = folder / INDEX_NAME
        self.index: IndexFile | None = None
        self.warnings: list[str] = []
        self.bad_records: dict[int, str] = {}

    @property
    def files(self) -> list[Path]:
        return self.data_paths

    def close(self) -> None:
        pass

    def read(self, fileno: int, offset: int, length: int) -> bytes:
        with open(self.data_paths[fileno], "rb") as fh:
            return os.pread(fh.fileno(), length, offset)

    def nonhier_values(self) -> list[NonhierValue]:
        out = []
        record_no = 0
        for i, layer_name, values in self.nonhier_layers:
            for j, (name, section) in enumerate(values):
                out.append(NonhierValue(i, j, layer_name, name, section,
                                        self.index.nonhier[record_no], record_no))
                record_no += 1
        return out

    def level_dimensions(self) -> list[tuple[int, int]]:
        """As OpenSlide computes them (overlap subtracted at camera-photo boundaries)."""
        ini, first = self.ini, self.level_sections[0]
        w, h = ini.integer(first, "DIGITIZER_WIDTH"), ini.integer(first, "DIGITIZER_HEIGHT")
        ox, oy = float(ini.value(first, "OVERLAP_X")), float(ini.value(first, "OVERLAP_Y"))
        div = int(ini.sections[GENERAL].get("CameraImageDivisionsPerSide", "1") or 1)
        base_w = sum(w if (i % div != div - 1 or i == self.images_x - 1) else w - ox
                     for i in range(self.images_x))
        base_h = sum(h if (i % div != div - 1 or i == self.images_y - 1) else h - oy
                     for i in range(self.images_y))
        dims, concat = [], 0
        for section in self.level_sections:
            concat += ini.integer(section, "IMAGE_CONCAT_FACTOR")
            dims.append((int(base_w) >> concat, int(base_h) >> concat))
        return dims

    def extra_files(self) -> list[str]:
        """Names of the files in the slide folder that Slidedat.ini does not name."""
        known = {"Slidedat.ini", self.index_path.name, *(p.name for p in self.data_paths)}
        return sorted(p.name for p in self.folder.iterdir() if p.name not in known)


# ---- reading ----------------------------------------------------------------------------------

def read_slide(path: Path) -> MiraxSlide:
    path = Path(path)
    if not path.name.endswith(EXTENSION):
        raise SlideError("a MIRAX slide's name must end in .mrxs, in lower case (OpenSlide's rule)")
    if not path.is_file():
        raise SlideError("no such file")
    folder = path.with_name(path.name[:-len(EXTENSION)])
    # messages name files by their role, never by name: they go into the audit report
    if folder.is_symlink():
        raise SlideError("the slide folder beside the .mrxs file is a symbolic link (refused)")
    if not folder.is_dir():
        raise SlideError("the slide folder beside the .mrxs file is missing")
    slide = MiraxSlide(path, folder, Slidedat.parse(_inside(folder, "Slidedat.ini", "Slidedat.ini").read_bytes()))
    ini = slide.ini
    for key in ("SLIDE_VERSION", "OBJECTIVE_MAGNIFICATION"):
        ini.value(GENERAL, key)
    slide.slide_id = ini.value(GENERAL, "SLIDE_ID")
    if not slide.slide_id:
        raise SlideError("Slidedat.ini [GENERAL] SLIDE_ID is empty")
    slide.images_x = ini.integer(GENERAL, "IMAGENUMBER_X", 1)
    slide.images_y = ini.integer(GENERAL, "IMAGENUMBER_Y", 1)
    _read_layers(slide)
    slide.data_paths = [_inside(folder, ini.value(DATAFILE, f"FILE_{i}"), f"data file {i}")
                        for i in range(ini.integer(DATAFILE, "FILE_COUNT", 1))]
    slide.data_sizes = [p.stat().st_size for p in slide.data_paths]
    slide.index_path = _inside(folder, ini.value(HIERARCHICAL, "INDEXFILE"), "index file")
    slide.index = IndexFile.parse(slide.index_path.read_bytes(), slide.slide_id,
                                  sum(len(v) for _, v in slide.hier_layers),
                                  sum(len(v) for _, _, v in slide.nonhier_layers))
    _check_records(slide)
    return slide


def _inside(folder: Path, name: str, role: str) -> Path:
    """A file named inside Slidedat.ini: it must be a plain file in the slide folder."""
    if (not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name
            or os.path.isabs(name)):
        raise SlideError(f"Slidedat.ini names a {role} outside the slide folder (refused)")
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise SlideError(f"missing file: the {role} named in Slidedat.ini") from None
    if stat.S_ISLNK(mode):
        raise SlideError(f"the {role} is a symbolic link (refused)")
    if not stat.S_ISREG(mode):
        raise SlideError(f"the {role} is not a regular file")
    return path


def _read_layers(slide: MiraxSlide) -> None:
    ini = slide.ini
    for i in range(ini.integer(HIERARCHICAL, "HIER_COUNT", 1)):
        name = ini.value(HIERARCHICAL, f"HIER_{i}_NAME")
        count = ini.integer(HIERARCHICAL, f"HIER_{i}_COUNT", 0)
        sections = [ini.sections[HIERARCHICAL].get(f"HIER_{i}_VAL_{j}_SECTION")
                    for j in range(count)]
        slide.hier_layers.append((name, sections))
    if slide.hier_layers[0][0] != ZOOM_LAYER:
        raise SlideError(f"Slidedat.ini: HIER_0 is not {ZOOM_LAYER!r} (OpenSlide requires it)")
    slide.level_sections = slide.hier_layers[0][1]
    if not slide.level_sections:
        raise SlideError("Slidedat.ini: the slide has no zoom levels")
    for n, section in enumerate(slide.level_sections):
        if section is None:
            raise SlideError(f"Slidedat.ini [HIERARCHICAL] has no HIER_0_VAL_{n}_SECTION")
        for key in LEVEL_KEYS:
            ini.value(section, key)
        ini.integer(section, "DIGITIZER_WIDTH", 1)
        ini.integer(section, "DIGITIZER_HEIGHT", 1)
        ini.integer(section, "IMAGE_CONCAT_FACTOR", 0 if n == 0 else 1)
    for i in range(ini.integer(HIERARCHICAL, "NONHIER_COUNT", 0)):
        name = ini.value(HIERARCHICAL, f"NONHIER_{i}_NAME")
        count = ini.integer(HIERARCHICAL, f"NONHIER_{i}_COUNT", 1)
        values = [(ini.value(HIERARCHICAL, f"NONHIER_{i}_VAL_{j}"),
                   ini.sections[HIERARCHICAL].get(f"NONHIER_{i}_VAL_{j}_SECTION"))
                  for j in range(count)]
        slide.nonhier_layers.append((i, name, values))


def _check_records(slide: MiraxSlide) -> None:
    """Zoom level records must be readable and inside their data files (OpenSlide fails
    otherwise); any other record that is not is dropped, or refused if it is to be kept."""
    levels = len(slide.level_sections)
    index = slide.index
    for (kind, n), message in sorted(index.errors.items()):
        if kind == "hier" and n < levels:
            raise SlideError(message)
        if kind == "nonhier":
            slide.bad_records[n] = message
        else:
            slide.warnings.append(f"{message}: the record is left out")
    for n, record in enumerate(index.hier):
        problem = _record_problem(slide, record)
        if problem and n < levels:
            raise SlideError(f"Index.dat zoom level {n} {problem}")
        if problem:
            index.hier[n] = None
            slide.warnings.append(f"Index.dat hierarchical record {n} {problem}: left out")
    for n, record in enumerate(index.nonhier):
        problem = _record_problem(slide, record)
        if problem:
            index.nonhier[n] = None
            slide.bad_records[n] = f"Index.dat non-hierarchical record {n} {problem}"


def _record_problem(slide: MiraxSlide, record: Record | None) -> str | None:
    for item in (record.items() if record else ()):
        offset, length, fileno = item[-3:]
        if not 0 <= fileno < len(slide.data_paths):
            return f"names data file {fileno}, but there are {len(slide.data_paths)}"
        if offset < 0 or length < 0 or offset + length > slide.data_sizes[fileno]:
            return f"points past the end of data file {fileno}"
    return None


def _runs(record: Record | None, codec: str) -> Runs:
    items = list(record.items()) if record else []
    return Runs(np.array([i[-1] for i in items], dtype=np.int64),
                np.array([i[-3] for i in items], dtype=np.int64),
                np.array([i[-2] for i in items], dtype=np.int64), codec)


# ---- the adapter ------------------------------------------------------------------------------

class MiraxAdapter(Adapter):
    name = "mirax"
    format_name = "3DHistech MIRAX"
    order = 20
    container = "mirax"
    extension = EXTENSION
    settled = ("keep", "replace")
    image_roles = IMAGE_ROLES
    # camera images overlap and do not form a regular tile grid: a DICOM copy re-encodes them
    tiles_copyable = False

    def detect(self, probe: Probe) -> bool:
        """MIRAX has no magic number: OpenSlide's rule is a name ending in .mrxs with a folder
        of the same name beside it. Any case is routed here so that reading can say what is
        wrong (OpenSlide wants lower case; reading checks that and the folder)."""
        return probe.path.name.lower().endswith(EXTENSION) and is_regular_file(probe.path)

    def read(self, job: Job) -> MiraxSlide:
        return read_slide(job.path)

    def fingerprint(self, slide: MiraxSlide) -> bytes:
        """The slide's content: its Slidedat.ini names the slide uniquely (renaming the input
        changes nothing)."""
        return fingerprint(slide.folder / "Slidedat.ini")

    def naming(self, slide: MiraxSlide, keyring: Keyring) -> Naming:
        """Pseudonym and new SLIDE_ID from the slide's content."""
        fp = self.fingerprint(slide)
        pseudonym = keyring.slide_pseudonym(fp)
        return Naming(pseudonym, pseudonym + EXTENSION,
                      slide_id=keyring.slide_identifier(fp, slide.slide_id), keyring=keyring)

    def images(self, slide: MiraxSlide) -> list[Image]:
        records = catalog.load("mirax", "records")
        out = []
        for value in slide.nonhier_values():
            entry = records.lookup(value.key)
            role = entry.action if entry is not catalog.UNKNOWN else "unknown"
            if role in IMAGE_ROLES:
                w, h = self._jpeg_size(slide, value.record)
                out.append(Image(value.key, role, w, h, "JPEG", runs=_runs(value.record, "image")))
        return out

    def pixels(self, slide: MiraxSlide, image: Image):
        import imagecodecs

        runs = image.runs
        if runs is None or len(runs) != 1:
            return None
        try:
            return imagecodecs.imread(slide.read(int(runs.files[0]), int(runs.offsets[0]),
                                                 int(runs.counts[0])))
        except Exception:  # noqa: BLE001 - a corrupt or unknown image: the caller decides
            return None

    def label_values(self, slide: MiraxSlide) -> list[str]:
        general = slide.ini.sections.get(GENERAL, {})
        return [general[k] for k in LABEL_KEYS if general.get(k, "").strip()]

    def writer(self, slide: MiraxSlide, naming: Naming, target: Target) -> MiraxWriter:
        return MiraxWriter(slide, naming, target)

    # ---- planning --------------------------------------------------------------------------
    def stored_naming(self, slide: MiraxSlide) -> Naming:
        name = slide.path.name[:-len(EXTENSION)]
        return Naming(name, slide.path.name, slide_id=slide.slide_id)

    def plan(self, slide: MiraxSlide, policy: Policy, naming: Naming, screen: bool = True,
             new_images: list = ()) -> Plan:
        if not policy.deidentify:
            from . import as_stored

            return self._finish_plan(slide, policy, naming, *as_stored.plan_mirax(self, slide))
        fields: list[Field] = []
        edits: list[ReplaceRun] = []
        images = []
        dimensions = slide.level_dimensions()
        base_w, base_h = dimensions[0]
        for n, ((w, h), section) in enumerate(zip(dimensions, slide.level_sections)):
            codec = slide.ini.value(section, "IMAGE_FORMAT")
            images.append(Image(f"zoom level {n}", "level", w, h, codec, "keep",
                                Geometry(n, (base_w / w if w else 0.0, base_h / h if h else 0.0)),
                                _runs(slide.index.hier[n], codec.lower())))
        kept_values = self._plan_records(slide, policy, images, fields)
        refuse_shared_bytes(images)
        files = [DataFileOut(data_file_name(i)) for i in range(len(slide.data_paths))]
        nonhier = self._keep_records(slide, kept_values, images, files, fields, edits)
        hier = self._keep_levels(slide, images, files, fields, edits, screen)
        moved = self._new_images(slide, kept_values, nonhier, files, edits, new_images)
        ini = SlidedatPlanner(slide, policy, naming, fields).build(kept_values)
        fields.append(Field("mirax:Index.dat SLIDE_ID", INDEX_NAME, slide.slide_id, "replace",
                            naming.slide_id, "the slide identifier, repeated from Slidedat.ini"))
        self._plan_headers(slide, files, naming, fields)
        self._plan_mrxs_file(slide, fields)
        plan = Plan(self.format_name, images, fields, list(slide.warnings),
                    edits + list(new_images), MiraxOutput(ini.to_bytes(), b"", files, moved))
        return self._finish_plan(slide, policy, naming, plan, hier, nonhier)

    @staticmethod
    def _finish_plan(slide: MiraxSlide, policy: Policy, naming: Naming, plan: Plan,
                     hier: list[Record | None], nonhier: list[Record | None]) -> Plan:
        """The regions painted (rewritten images may move), then Index.dat."""
        if policy.redaction is not None:
            from . import mrxs_regions

            hier = mrxs_regions.plan_regions(slide, plan, policy.redaction, hier)
        plan.output.index = IndexFile(naming.slide_id, hier, nonhier).to_bytes()
        return plan

    def _plan_records(self, slide: MiraxSlide, policy: Policy, images: list[Image],
                      fields: list[Field]) -> list[NonhierValue]:
        records = catalog.load("mirax", "records")
        kept = []
        for value in slide.nonhier_values():
            entry = records.lookup(value.key)
            role = value.role = entry.action if entry is not catalog.UNKNOWN else "unknown"
            where = f"non-hierarchical record {value.key}"
            if role in IMAGE_ROLES:
                action = policy.image_action_for(value.key, role)
                w, h = self._jpeg_size(slide, value.record)
                images.append(Image(value.key, role, w, h, "JPEG", action,
                                    runs=_runs(value.record, "image")))
            else:
                action = "keep" if role == "geometry" else "drop"
                if action == "drop":   # named by position: an unknown layer's name is free text
                    where = f"non-hierarchical record {value.number}"
                fields.append(Field(f"mirax:record {value.key if action == 'keep' else '(unknown)'}",
                                    where, "", "keep" if action == "keep" else "remove",
                                    why=entry.why))
                if action == "drop":
                    fields += self._record_text(slide, value, where)
            if value.number in slide.bad_records:
                if action in KEPT:
                    raise SlideError(slide.bad_records[value.number])
                slide.warnings.append(f"{slide.bad_records[value.number]}: dropped")
            if action in KEPT:
                kept.append(value)
        return kept

    @staticmethod
    def _new_images(slide: MiraxSlide, kept: list[NonhierValue], nonhier: list[Record | None],
                    files: list[DataFileOut], edits: list[ReplaceRun],
                    new_images) -> dict[tuple[str, int], int]:
        """A synthesized label or a blanked overview becomes the new JPEG of its record: in
        the record's place when it fits there (the rest of the old bytes is zeroed with every
        byte no record uses), else appended to its data file. Returns the moved records."""
        from .mrxs_regions import MAX_OFFSET

        moved: dict[tuple[str, int], int] = {}
        positions = {value.key: n for n, value in enumerate(kept)}
        for new in new_images:
            n = positions.get(new.image)
            items = list(nonhier[n].items()) if n is not None and nonhier[n] else []
            if len(items) != 1:
                raise SlideError(f"record {new.image}: not one stored image; it cannot be rewritten")
            a, b, offset, length, fileno = items[0]
            _, _, _, stored, _ = next(kept[n].record.items())
            cleaned = next((e.data for e in edits if e.image == new.image), None)
            old = cleaned if cleaned is not None else slide.read(fileno, offset, length)
            data = new_jpeg(old, new)
            edits[:] = [e for e in edits if e.image != new.image]
            edits.append(ReplaceRun(new.image, 0, data))
            spec = files[fileno]
            spec.keep.remove((offset, offset + length))
            place = offset
            if len(data) > stored:   # the old place is too small: at the end of the file
                place = -(-spec.end // 16) * 16
                if place + len(data) > MAX_OFFSET:
                    raise SlideError(f"{spec.name} would grow past 2 GB (Index.dat offsets are 32-bit)")
                moved[(new.image, 0)] = place
            spec.keep.append((place, place + len(data)))
            nonhier[n] = Record([[(a, b, place, len(data), fileno)]])
        return moved

    @staticmethod
    def _jpeg_size(slide: MiraxSlide, record: Record | None) -> tuple[int, int]:
        for _, _, offset, length, fileno in (record.items() if record else ()):
            return segments.jpeg_size(slide.read(fileno, offset, min(length, 1 << 16)))
        return 0, 0

    @staticmethod
    def _record_text(slide: MiraxSlide, value: NonhierValue, where: str) -> list[Field]:
        """Text inside a record that is removed: searched for in the output by verification."""
        out: list[Field] = []
        for _, _, offset, length, fileno in (value.record.items() if value.record else ()):
            if length <= MAX_TEXT_SCAN:
                out += text_fields(slide.read(fileno, offset, length), "mirax:record text", where)
        return out[:MAX_TEXT_FIELDS]

    def _keep_records(self, slide: MiraxSlide, kept: list[NonhierValue], images: list[Image],
                      files: list[DataFileOut], fields: list[Field],
                      edits: list[ReplaceRun]) -> list[Record | None]:
        """The non-hierarchical records of the output, in the order of the kept values; text
        segments of kept images are removed (the record gets shorter)."""
        out: list[Record | None] = []
        for value in kept:
            if value.record is None:
                out.append(None)
                continue
            cleaned = {}
            if value.role in IMAGE_ROLES:
                runs = _runs(value.record, "image")
                cleaned = self._clean(slide, value.key, runs, range(len(runs)), False,
                                      f"record {value.key}", files, fields, edits)
            elif value.role == "geometry":
                length, tail = mrxs_positions.kept_length(slide, value)
                cleaned = {0: length}
                if tail:
                    fields += text_fields(tail, "mirax:record trailing data",
                                          f"non-hierarchical record {value.key}")[:MAX_TEXT_FIELDS]
                    fields.append(Field("mirax:record trailing data",
                                        f"non-hierarchical record {value.key}", "", "remove",
                                        why=f"{len(tail)} bytes after the camera positions"))
            pages, run = [], 0
            for page in value.record.pages:
                items = []
                for a, b, offset, length, fileno in page:
                    length = cleaned.get(run, length)
                    files[fileno].keep.append((offset, offset + length))
                    items.append((a, b, offset, length, fileno))
                    run += 1
                pages.append(items)
            out.append(Record(pages))
        return out

    def _keep_levels(self, slide: MiraxSlide, images: list[Image], files: list[DataFileOut],
                     fields: list[Field], edits: list[ReplaceRun],
                     screen: bool) -> list[Record | None]:
        hier = list(slide.index.hier)
        n_levels = len(slide.level_sections)
        for record in hier:
            for item in (record.items() if record else ()):
                offset, length, fileno = item[-3:]
                files[fileno].keep.append((offset, offset + length))
        if not screen:
            return hier
        for image in images[:n_levels]:
            if image.runs.codec not in ("jpeg", "png") and len(image.runs):
                raise SlideError(f"{image.index}: {image.compression} images cannot be checked "
                                 "for hidden text; the slide is refused")
        new_lengths: dict[tuple[int, int], int] = {}
        # JPEG tiles are screened one data file at a time; PNG tiles are all walked
        for fileno in range(len(slide.data_paths)):
            for image in images[:n_levels]:
                if image.runs.codec != "jpeg":
                    continue
                subset = np.nonzero((image.runs.files == fileno) & (image.runs.counts > 0))[0]
                new_lengths.update(self._clean(slide, image.index, image.runs, subset, True,
                                               "zoom level tile", files, fields, edits, by_offset=True))
        for image in images[:n_levels]:
            if image.runs.codec == "png":
                new_lengths.update(self._clean(slide, image.index, image.runs,
                                               range(len(image.runs)), False, "zoom level tile",
                                               files, fields, edits, by_offset=True))
        if not new_lengths:
            return hier
        for n in range(n_levels):
            record = hier[n]
            if record is None:
                continue
            hier[n] = Record([[(i, o, new_lengths.get((f, o), l), f) for i, o, l, f in page]
                              for page in record.pages])
        for fileno, out in enumerate(files):   # the shortened tiles keep only their new length
            out.keep = [(a, a + new_lengths[(fileno, a)]) if (fileno, a) in new_lengths else (a, b)
                        for a, b in out.keep]
        return hier

    def _clean(self, slide: MiraxSlide, image: str, runs: Runs, subset, screen: bool, where: str,
               files: list[DataFileOut], fields: list[Field], edits: list[ReplaceRun],
               by_offset: bool = False) -> dict:
        """Remove text segments (JPEG APPn/COM, PNG text chunks) from the stored images `subset`
        of `runs` (all in one data file when screened); a cleaned image replaces the old one at
        its offset. Returns the new lengths, by run number (or by (file, offset))."""
        subset = np.asarray(list(subset), dtype=np.int64)
        lengths: dict = {}
        for fileno in sorted(set(runs.files[subset].tolist())) if len(subset) else []:
            part = subset[runs.files[subset] == fileno]
            with open(slide.data_paths[fileno], "rb") as fh:
                found = codestreams.clean_runs(fh.fileno(), slide.data_sizes[fileno],
                                               runs.offsets[part], runs.counts[part],
                                               runs.codec if screen else "image", screen=screen)
            for result in found:
                run = int(part[result.index])
                offset = int(runs.offsets[run])
                if isinstance(result, codestreams.Unparseable):
                    raise SlideError(f"{image}: {where} {run} (data file {fileno} at {offset}) "
                                     f"is outside its codec's grammar ({result.reason}); the "
                                     "slide is refused")
                edits.append(ReplaceRun(image, run, result.data))
                lengths[(fileno, offset) if by_offset else run] = len(result.data)
                for marker, payload in result.removed:
                    fields.append(Field(f"codestream:{marker}", f"{where} ({files[fileno].name})",
                                        segments.payload_text(payload), "remove",
                                        why=segments.why_removed(
                                            marker, "text segment inside the image codestream")))
        return lengths

    @staticmethod
    def _plan_headers(slide: MiraxSlide, files: list[DataFileOut], naming: Naming,
                      fields: list[Field]) -> None:
        """Data files start with "01.02" + SLIDE_ID (rewritten); every other byte before the
        first record (a ProfileName, for example) and between records is zeroed."""
        old = VERSION + slide.slide_id.encode("utf-8")
        for fileno, out in enumerate(files):
            first = min([a for a, _ in out.keep], default=slide.data_sizes[fileno])
            head = slide.read(fileno, 0, min(first, MAX_TEXT_SCAN))
            rest = head
            if head.startswith(old):
                out.header = VERSION + naming.slide_id.encode("utf-8")
                rest = head[len(old):]
                fields.append(Field("mirax:data file SLIDE_ID", f"{out.name} header", slide.slide_id,
                                    "replace", naming.slide_id, "the slide identifier, repeated"))
            fields += text_fields(rest, "mirax:data file header text", f"{out.name} header")[:MAX_TEXT_FIELDS]

    @staticmethod
    def _plan_mrxs_file(slide: MiraxSlide, fields: list[Field]) -> None:
        """OpenSlide reads nothing from NAME.mrxs; the output's is empty. Files in the slide
        folder that Slidedat.ini does not name are not part of the slide: not written."""
        for number, extra in enumerate(slide.extra_files()):
            fields.append(Field("mirax:extra file", f"slide folder entry {number}", extra, "remove",
                                why="not a file of the slide (Slidedat.ini does not name it)"))
        size = slide.path.stat().st_size
        if size:
            data = slide.path.read_bytes()[:MAX_TEXT_SCAN]
            fields.append(Field("mirax:.mrxs content", slide.path.name, "", "remove",
                                why=f"{size} bytes no reader needs"))
            fields += text_fields(data, "mirax:.mrxs text", slide.path.name)[:MAX_TEXT_FIELDS]


def new_jpeg(old: bytes, new: ReplaceImage | RedactImage) -> bytes:
    """The record's new JPEG: a synthesized label encoded anew; an overview with its label
    area blanked in the DCT domain (every other block keeps its coefficients), or encoded anew
    from the blanked picture when the stream cannot be edited so."""
    from ..images import encode, redact

    if isinstance(new, ReplaceImage):
        return encode.encode(new.pixels, "jpeg", "ycbcr", subsampling=(2, 2))
    pixels = new.regions["_pixels"]
    height, width = pixels.shape[:2]
    mask = encode.boxes_mask(new.regions["boxes"], height, width)
    fill = int(round(float(np.mean(pixels[mask])))) if mask.any() else 0
    try:
        return redact.redact_tile("jpeg", old, mask, fill)
    except redact.RedactError:
        return encode.encode(pixels, "jpeg", "ycbcr", subsampling=(2, 2))


def text_fields(data: bytes, name: str, where: str) -> list[Field]:
    """Printable runs (ASCII and UTF-16LE) of bytes that are being removed."""
    runs = {m.group().decode("ascii") for m in TEXT_RUN.finditer(data)}
    runs |= {m.group().decode("utf-16-le") for m in TEXT_RUN_UTF16.finditer(data)}
    return [Field(name, where, run, "remove", why="text in bytes that no kept record uses")
            for run in sorted(runs)]


def two_step_renames(folder: Path, renames: list[tuple[str, str]]) -> list[tuple[Path, Path]]:
    """Renames within a folder in two steps, so that a name another file is about to leave is
    never overwritten (Data0001.dat -> Data0000.dat while Data0000.dat -> ...)."""
    moves = [(a, b) for a, b in renames if a != b]
    token = os.urandom(4).hex()
    first = [(folder / a, folder / f".{n}.{token}.renaming") for n, (a, _) in enumerate(moves)]
    second = [(folder / f".{n}.{token}.renaming", folder / b) for n, (_, b) in enumerate(moves)]
    return first + second


def _record_digests(slide: MiraxSlide, output: MiraxOutput) -> dict[int, list[tuple[int, int, str]]]:
    """(offset, length, digest) of a spread of the kept records of every data file, before an
    in-place patch: verification compares the patched files with them."""
    out: dict[int, list[tuple[int, int, str]]] = {}
    for fileno, spec in enumerate(output.data_files):
        ranges = [r for r in sorted(set(spec.keep)) if r[0] not in spec.replacements]
        picks = sample([b - a for a, b in ranges], [])
        with open(slide.data_paths[fileno], "rb") as fh:
            out[fileno] = [(a, b - a, digest(os.pread(fh.fileno(), b - a, a)))
                           for a, b in (ranges[i] for i in picks)]
    return out


def replacements(plan: Plan) -> dict[int, dict[int, bytes]]:
    """The cleaned images of the plan's edits, by data file and offset."""
    images = {image.index: image for image in plan.images}
    moved = plan.output.moved
    out: dict[int, dict[int, bytes]] = {}
    for edit in plan.edits:
        if isinstance(edit, (RedactImage, ReplaceImage)):   # their images are ReplaceRun edits
            continue
        if not isinstance(edit, ReplaceRun):
            raise SlideError("replacing whole images is not supported yet")
        runs = images[edit.image].runs
        offset = moved.get((edit.image, edit.run), int(runs.offsets[edit.run]))
        out.setdefault(int(runs.files[edit.run]), {})[offset] = edit.data
    return out


# ---- writing ----------------------------------------------------------------------------------

class MiraxWriter:
    """NAME.mrxs + NAME/ under a hidden staging folder in OUTDIR (data files copied by the
    kernel while the slide is planned), or the slide patched where it is (in place)."""

    screens = False   # the plan screens the image data (beside the copy)

    def __init__(self, slide: MiraxSlide, naming: Naming, target: Target):
        self.slide = slide
        self.naming = naming
        self.target = target
        self.staging: Staging | None = None
        if target.in_place:
            parent = slide.path.parent
            self.final_folder = parent / naming.pseudonym
            self.final = parent / naming.output_name
            renamed = self.final != slide.path   # `redact` keeps the names
            if renamed and (self.final.exists() or self.final_folder.exists()):
                raise SlideError(f"{self.final.name} or its folder already exists next to the input")
            extra = slide.extra_files()
            if extra:
                raise SlideError(f"the slide folder holds files the slide does not use ({len(extra)}); "
                                 "move them away, or de-identify into a new folder with -o")
            return
        self.staging = Staging(target.outdir, naming.pseudonym, kind="folder")
        self.folder = self.staging.path / naming.pseudonym
        self.folder.mkdir()
        self.fds = [os.open(self.folder / f"Data{i:04d}.dat", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    for i in range(len(slide.data_paths))]
        self.copier = Background(lambda: [(copy_file(src, fd), start_writeback(fd))
                                          for src, fd in zip(slide.data_paths, self.fds)])

    def finish(self, plan: Plan) -> Written:
        output: MiraxOutput = plan.output
        for fileno, replaced in replacements(plan).items():
            output.data_files[fileno].replacements = replaced
        if self.staging is None:
            return self._finish_in_place(output)
        try:
            self.copier.join()
            zeroed = 0
            for fd, out in zip(self.fds, output.data_files):
                zeroed += finish_data_file(DirectWrites(fd), out)
                os.fsync(fd)
        finally:
            self._close()
        write_new(self.folder / "Slidedat.ini", output.slidedat)
        write_new(self.folder / INDEX_NAME, output.index)
        mrxs = self.staging.path / self.naming.output_name
        write_new(mrxs, b"")
        fsync_dir(self.folder)
        name = self.naming.pseudonym
        # folder first, then NAME.mrxs: a slide whose .mrxs exists is complete
        release = lambda: self.staging.release([(name, name), (mrxs.name, mrxs.name)])  # noqa: E731
        return Written((mrxs,), release, self.staging.discard, zeroed, {"input_intact": True})

    def _finish_in_place(self, output: MiraxOutput) -> Written:
        """Patch the slide where it is: the data files keep every kept record where it is
        (dropped and unused bytes zeroed, headers rewritten, files cut), Slidedat.ini and
        Index.dat are replaced, NAME.mrxs emptied, then the folder and NAME.mrxs take the
        pseudonym. Everything was planned and checked before; what the patch overwrites is
        saved in an undo record first (restored if verification fails, or by the next run)."""
        slide = self.slide
        folder = slide.folder
        undo = Undo(undo_record_for(slide.path))
        fds = [os.open(src, os.O_RDWR) for src in slide.data_paths]
        try:
            planned = [PlannedWrites(fd) for fd in fds]
            zeroed = sum(finish_data_file(p, spec) for p, spec in zip(planned, output.data_files))
            digests = _record_digests(slide, output)
            for src, p in zip(slide.data_paths, planned):
                undo.keep_ranges(src, p.ranges())
            for small in (folder / "Slidedat.ini", slide.index_path, slide.path):
                undo.keep_file(small)
            renames = two_step_renames(folder, [(old.name, spec.name) for old, spec
                                                in zip(slide.data_paths, output.data_files)])
            for old, new in renames:
                undo.rename(old, new)
            undo.rename(folder, self.final_folder)
            undo.rename(slide.path, self.final)
            undo.seal()
            for p, fd in zip(planned, fds):
                p.apply()
                os.fsync(fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            if (undo.record / "manifest.json").exists():
                undo.restore()
            else:
                undo.discard()
            raise
        for fd in fds:
            os.close(fd)
        try:
            for old, new in renames:
                os.rename(old, new)
            replace_durably(folder / "Slidedat.ini", output.slidedat)
            replace_durably(folder / INDEX_NAME, output.index)
            if slide.index_path.name != INDEX_NAME:
                slide.index_path.unlink()
            replace_durably(slide.path, b"")
            fsync_dir(folder)
            os.rename(folder, self.final_folder)
            os.rename(slide.path, self.final)
            fsync_dir(slide.path.parent)
        except BaseException:
            undo.restore()
            raise

        def release() -> Path:
            return self.final

        return Written((self.final,), release, undo.restore, zeroed,
                       {"input_intact": False, "digests": digests}, undo=undo.record)

    def _close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def abort(self) -> None:
        if self.staging is None:
            return
        try:
            self.copier.join()
        except BaseException:  # noqa: BLE001 - the copy's own failure is not the news
            pass
        self._close()
        self.staging.discard()


ADAPTER = MiraxAdapter()
