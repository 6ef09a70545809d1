"""3DHistech MIRAX: `NAME.mrxs` plus the folder `NAME/` with Slidedat.ini, Index.dat and the
data files (layout: https://openslide.org/formats/mirax/ and OpenSlide's
openslide-vendor-mirax.c, whose checks this adapter repeats so that what it accepts OpenSlide
opens, and what it writes OpenSlide still opens).

Plan: Slidedat.ini key by key through `formats/mirax.toml`; non-hierarchical records (label,
macro, overview, preview, camera positions, anything else) kept or dropped by role, with
their keys and sections renumbered; SLIDE_ID replaced by a keyed value of the same length
everywhere (Slidedat.ini, Index.dat, data file headers); every data file byte that no kept
record points at is zeroed; text segments inside kept JPEGs removed.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import catalog
from ..errors import SlideError
from ..images import segments
from ..model import Field, Image, Plan
from ..mrxs.index import VERSION, IndexFile, Record
from ..mrxs.slidedat import (
    DATAFILE,
    GENERAL,
    HIERARCHICAL,
    INDEX_NAME,
    Slidedat,
    data_file_name,
)
from ..mrxs.slidedat_plan import SlidedatPlanner
from ..policy import Policy

EXTENSION = ".mrxs"
ZOOM_LAYER = "Slide zoom level"
LEVEL_KEYS = ("IMAGE_CONCAT_FACTOR", "OVERLAP_X", "OVERLAP_Y", "MICROMETER_PER_PIXEL_X",
              "MICROMETER_PER_PIXEL_Y", "IMAGE_FILL_COLOR_BGR", "DIGITIZER_WIDTH",
              "DIGITIZER_HEIGHT", "IMAGE_FORMAT")
IMAGE_ROLES = ("label", "macro", "overview", "thumbnail")
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


@dataclass
class Naming:
    pseudonym: str
    slide_id: str


@dataclass
class DataFileOut:
    """What the writer does to one data file: keep these byte ranges, write the header and
    the cleaned records, zero everything else, cut the file after its last kept byte."""
    name: str
    keep: list[tuple[int, int]] = field(default_factory=list)
    header: bytes = b""
    replacements: dict[int, bytes] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return max([len(self.header)] + [b for _, b in self.keep])


@dataclass
class MrxsOutput:
    slidedat: bytes
    index: bytes
    data_files: list[DataFileOut]


class MrxsSlide:
    extension = EXTENSION

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.name.endswith(EXTENSION):
            raise SlideError("a MIRAX slide's name must end in .mrxs, in lower case (OpenSlide's rule)")
        if not self.path.is_file():
            raise SlideError("no such file")
        self.folder = self.path.with_name(self.path.name[:-len(EXTENSION)])
        # messages name files by their role, never by name: they go into the audit report
        if self.folder.is_symlink():
            raise SlideError("the slide folder beside the .mrxs file is a symbolic link (refused)")
        if not self.folder.is_dir():
            raise SlideError("the slide folder beside the .mrxs file is missing")
        self.ini = Slidedat.parse(self._inside("Slidedat.ini", "Slidedat.ini").read_bytes())
        ini = self.ini
        for key in ("SLIDE_VERSION", "OBJECTIVE_MAGNIFICATION"):
            ini.value(GENERAL, key)
        self.slide_id = ini.value(GENERAL, "SLIDE_ID")
        if not self.slide_id:
            raise SlideError("Slidedat.ini [GENERAL] SLIDE_ID is empty")
        self.images_x = ini.integer(GENERAL, "IMAGENUMBER_X", 1)
        self.images_y = ini.integer(GENERAL, "IMAGENUMBER_Y", 1)
        self._read_layers()
        self.data_paths = [self._inside(ini.value(DATAFILE, f"FILE_{i}"), f"data file {i}")
                           for i in range(ini.integer(DATAFILE, "FILE_COUNT", 1))]
        self.data_sizes = [p.stat().st_size for p in self.data_paths]
        self.index_path = self._inside(ini.value(HIERARCHICAL, "INDEXFILE"), "index file")
        self.index = IndexFile.parse(self.index_path.read_bytes(), self.slide_id,
                                     sum(len(v) for _, v in self.hier_layers),
                                     sum(len(v) for _, _, v in self.nonhier_layers))
        self.warnings: list[str] = []
        self._check_records()

    # -- reading ---------------------------------------------------------------------------

    def _inside(self, name: str, role: str) -> Path:
        """A file named inside Slidedat.ini: it must be a plain file in the slide folder."""
        if (not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name
                or os.path.isabs(name)):
            raise SlideError(f"Slidedat.ini names a {role} outside the slide folder (refused)")
        path = self.folder / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise SlideError(f"missing file: the {role} named in Slidedat.ini") from None
        if stat.S_ISLNK(mode):
            raise SlideError(f"the {role} is a symbolic link (refused)")
        if not stat.S_ISREG(mode):
            raise SlideError(f"the {role} is not a regular file")
        return path

    def _read_layers(self) -> None:
        ini = self.ini
        self.hier_layers: list[tuple[str, list[str | None]]] = []
        for i in range(ini.integer(HIERARCHICAL, "HIER_COUNT", 1)):
            name = ini.value(HIERARCHICAL, f"HIER_{i}_NAME")
            count = ini.integer(HIERARCHICAL, f"HIER_{i}_COUNT", 0)
            sections = [ini.sections[HIERARCHICAL].get(f"HIER_{i}_VAL_{j}_SECTION")
                        for j in range(count)]
            self.hier_layers.append((name, sections))
        if self.hier_layers[0][0] != ZOOM_LAYER:
            raise SlideError(f"Slidedat.ini: HIER_0 is not {ZOOM_LAYER!r} (OpenSlide requires it)")
        self.level_sections = self.hier_layers[0][1]
        if not self.level_sections:
            raise SlideError("Slidedat.ini: the slide has no zoom levels")
        for n, section in enumerate(self.level_sections):
            if section is None:
                raise SlideError(f"Slidedat.ini [HIERARCHICAL] has no HIER_0_VAL_{n}_SECTION")
            for key in LEVEL_KEYS:
                ini.value(section, key)
            ini.integer(section, "DIGITIZER_WIDTH", 1)
            ini.integer(section, "DIGITIZER_HEIGHT", 1)
            ini.integer(section, "IMAGE_CONCAT_FACTOR", 0 if n == 0 else 1)
        self.nonhier_layers: list[tuple[int, str, list[tuple[str, str | None]]]] = []
        for i in range(ini.integer(HIERARCHICAL, "NONHIER_COUNT", 0)):
            name = ini.value(HIERARCHICAL, f"NONHIER_{i}_NAME")
            count = ini.integer(HIERARCHICAL, f"NONHIER_{i}_COUNT", 1)
            values = [(ini.value(HIERARCHICAL, f"NONHIER_{i}_VAL_{j}"),
                       ini.sections[HIERARCHICAL].get(f"NONHIER_{i}_VAL_{j}_SECTION"))
                      for j in range(count)]
            self.nonhier_layers.append((i, name, values))

    def _check_records(self) -> None:
        """Zoom level records must be readable and inside their data files (OpenSlide fails
        otherwise); any other record that is not is dropped, or refused if it is to be kept."""
        self.bad_records: dict[int, str] = {}
        levels = len(self.level_sections)
        for (kind, n), message in sorted(self.index.errors.items()):
            if kind == "hier" and n < levels:
                raise SlideError(message)
            if kind == "nonhier":
                self.bad_records[n] = message
            else:
                self.warnings.append(f"{message}: the record is left out")
        for n, record in enumerate(self.index.hier):
            problem = self._record_problem(record)
            if problem and n < levels:
                raise SlideError(f"Index.dat zoom level {n} {problem}")
            if problem:
                self.index.hier[n] = None
                self.warnings.append(f"Index.dat hierarchical record {n} {problem}: left out")
        for n, record in enumerate(self.index.nonhier):
            problem = self._record_problem(record)
            if problem:
                self.index.nonhier[n] = None
                self.bad_records[n] = f"Index.dat non-hierarchical record {n} {problem}"

    def _record_problem(self, record: Record | None) -> str | None:
        for item in (record.items() if record else ()):
            offset, length, fileno = item[-3:]
            if not 0 <= fileno < len(self.data_paths):
                return f"names data file {fileno}, but there are {len(self.data_paths)}"
            if offset < 0 or length < 0 or offset + length > self.data_sizes[fileno]:
                return f"points past the end of data file {fileno}"
        return None

    def nonhier_values(self) -> list[NonhierValue]:
        out = []
        record_no = 0
        for i, layer_name, values in self.nonhier_layers:
            for j, (name, section) in enumerate(values):
                out.append(NonhierValue(i, j, layer_name, name, section,
                                        self.index.nonhier[record_no], record_no))
                record_no += 1
        return out

    def read(self, fileno: int, offset: int, length: int) -> bytes:
        with open(self.data_paths[fileno], "rb") as fh:
            return os.pread(fh.fileno(), length, offset)

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

    def close(self) -> None:
        pass

    # -- planning --------------------------------------------------------------------------

    def plan(self, policy: Policy, naming: Naming | None = None,
             scan_codestreams: bool = True) -> tuple[Plan, MrxsOutput]:
        naming = naming or Naming("slide", self.slide_id)
        fields: list[Field] = []
        images = [Image(f"zoom level {n}", "level", w, h, self.ini.value(s, "IMAGE_FORMAT"))
                  for n, ((w, h), s) in enumerate(zip(self.level_dimensions(), self.level_sections))]
        kept_values = self._plan_records(policy, images, fields)
        files = [DataFileOut(data_file_name(i)) for i in range(len(self.data_paths))]
        nonhier = self._keep_records(kept_values, files, fields)
        hier = self._keep_levels(files, fields, scan_codestreams)
        ini = SlidedatPlanner(self, policy, naming, fields).build(kept_values)
        fields.append(Field("mirax:Index.dat SLIDE_ID", INDEX_NAME, self.slide_id, "replace",
                            naming.slide_id, "the slide identifier, repeated from Slidedat.ini"))
        self._plan_headers(files, naming, fields)
        self._plan_mrxs_file(fields)
        index = IndexFile(naming.slide_id, hier, nonhier).to_bytes()
        plan = Plan("3DHistech MIRAX", images, fields, self.warnings)
        return plan, MrxsOutput(ini.to_bytes(), index, files)

    def _plan_records(self, policy: Policy, images: list[Image],
                      fields: list[Field]) -> list[NonhierValue]:
        records = catalog.load("mirax", "records")
        kept = []
        for value in self.nonhier_values():
            entry = records.lookup(value.key)
            role = value.role = entry.action if entry is not catalog.UNKNOWN else "unknown"
            where = f"non-hierarchical record {value.key}"
            if role in IMAGE_ROLES:
                action = policy.image_action(role)
                w, h = self._jpeg_size(value.record)
                images.append(Image(value.key, role, w, h, "JPEG", action))
            else:
                action = "keep" if role == "geometry" else "drop"
                if action == "drop":   # named by position: an unknown layer's name is free text
                    where = f"non-hierarchical record {value.number}"
                fields.append(Field(f"mirax:record {value.key if action == 'keep' else '(unknown)'}",
                                    where, "", "keep" if action == "keep" else "remove",
                                    why=entry.why))
                if action == "drop":
                    fields += self._record_text(value, where)
            if value.number in self.bad_records:
                if action == "keep":
                    raise SlideError(self.bad_records[value.number])
                self.warnings.append(f"{self.bad_records[value.number]}: dropped")
            if action == "keep":
                kept.append(value)
        return kept

    def _jpeg_size(self, record: Record | None) -> tuple[int, int]:
        for _, _, offset, length, fileno in (record.items() if record else ()):
            return segments.jpeg_size(self.read(fileno, offset, min(length, 1 << 16)))
        return 0, 0

    def _record_text(self, value: NonhierValue, where: str) -> list[Field]:
        """Text inside a record that is removed: searched for in the output by verification."""
        out: list[Field] = []
        for _, _, offset, length, fileno in (value.record.items() if value.record else ()):
            if length <= MAX_TEXT_SCAN:
                out += text_fields(self.read(fileno, offset, length), "mirax:record text", where)
        return out[:MAX_TEXT_FIELDS]

    def _keep_records(self, kept: list[NonhierValue], files: list[DataFileOut],
                      fields: list[Field]) -> list[Record | None]:
        """The non-hierarchical records of the output, in the order of the kept values; text
        segments of kept images are removed (the record gets shorter)."""
        out: list[Record | None] = []
        for value in kept:
            if value.record is None:
                out.append(None)
                continue
            is_image = value.role in IMAGE_ROLES
            pages = []
            for page in value.record.pages:
                items = []
                for a, b, offset, length, fileno in page:
                    if is_image:
                        length = self._clean_image(files[fileno], fileno, offset, length,
                                                  fields, f"record {value.key}")
                    files[fileno].keep.append((offset, offset + length))
                    items.append((a, b, offset, length, fileno))
                pages.append(items)
            out.append(Record(pages))
        return out

    def _keep_levels(self, files: list[DataFileOut], fields: list[Field],
                     scan_codestreams: bool) -> list[Record | None]:
        hier = list(self.index.hier)
        n_levels = len(self.level_sections)
        jpeg_levels = {n for n, s in enumerate(self.level_sections)
                       if self.ini.value(s, "IMAGE_FORMAT") == "JPEG"}
        for record in hier:
            for item in (record.items() if record else ()):
                offset, length, fileno = item[-3:]
                files[fileno].keep.append((offset, offset + length))
        if not scan_codestreams:
            return hier
        # Screen every JPEG tile for APPn/COM text segments, one data file at a time.
        flagged: dict[tuple[int, int], int] = {}
        for fileno, path in enumerate(self.data_paths):
            runs = [(item[1], item[2]) for n in jpeg_levels if hier[n]
                    for item in hier[n].items() if item[3] == fileno and item[2] > 0]
            if not runs:
                continue
            offs = np.array([r[0] for r in runs], dtype=np.int64)
            cnts = np.array([r[1] for r in runs], dtype=np.int64)
            with open(path, "rb") as fh:
                hits = segments.screen_runs(fh.fileno(), self.data_sizes[fileno], offs, cnts,
                                            segments.screen_jpeg)
            for k in np.nonzero(hits)[0].tolist():
                offset, length = int(offs[k]), int(cnts[k])
                flagged[(fileno, offset)] = self._clean_image(files[fileno], fileno, offset, length,
                                                             fields, "zoom level tile")
        # PNG tiles (IMAGE_FORMAT = PNG): no vectorised screen; every chunk list is walked
        for n, section in enumerate(self.level_sections):
            if self.ini.value(section, "IMAGE_FORMAT") != "PNG" or hier[n] is None:
                continue
            for _, offset, length, fileno in hier[n].items():
                new_length = self._clean_image(files[fileno], fileno, offset, length, fields,
                                               "zoom level tile")
                if offset in files[fileno].replacements:
                    flagged[(fileno, offset)] = new_length
        if not flagged:
            return hier
        for n in range(n_levels):
            record = hier[n]
            if record is None:
                continue
            hier[n] = Record([[(i, o, flagged.get((f, o), l), f) for i, o, l, f in page]
                              for page in record.pages])
        for fileno, out in enumerate(files):   # the shortened tiles keep only their new length
            out.keep = [(a, a + len(out.replacements[a])) if a in out.replacements else (a, b)
                        for a, b in out.keep]
        return hier

    def _clean_image(self, out: DataFileOut, fileno: int, offset: int, length: int,
                     fields: list[Field], where: str) -> int:
        """Remove text segments (JPEG APPn/COM, PNG text chunks) from one stored image; the
        cleaned image replaces it at the same offset. Returns its new length."""
        data = self.read(fileno, offset, length)
        try:
            cleaned, removed = segments.clean_image(data)
        except segments.MalformedStream as exc:
            self.warnings.append(f"{where} in data file {fileno} at {offset}: "
                                  f"unparseable image left as is ({exc})")
            return length
        if not removed:
            return length
        out.replacements[offset] = cleaned
        for marker, payload in removed:
            fields.append(Field(f"codestream:{marker}", f"{where} ({out.name})",
                                segments.payload_text(payload), "remove",
                                why="text segment inside the image codestream"))
        return len(cleaned)

    def _plan_headers(self, files: list[DataFileOut], naming: Naming, fields: list[Field]) -> None:
        """Data files start with "01.02" + SLIDE_ID (rewritten); every other byte before the
        first record (a ProfileName, for example) and between records is zeroed."""
        old = VERSION + self.slide_id.encode("utf-8")
        for fileno, out in enumerate(files):
            first = min([a for a, _ in out.keep], default=self.data_sizes[fileno])
            head = self.read(fileno, 0, min(first, MAX_TEXT_SCAN))
            rest = head
            if head.startswith(old):
                out.header = VERSION + naming.slide_id.encode("utf-8")
                rest = head[len(old):]
                fields.append(Field("mirax:data file SLIDE_ID", f"{out.name} header", self.slide_id,
                                    "replace", naming.slide_id, "the slide identifier, repeated"))
            fields += text_fields(rest, "mirax:data file header text", f"{out.name} header")[:MAX_TEXT_FIELDS]

    def plan_extra_files(self) -> list[str]:
        """Names of the files in the slide folder that Slidedat.ini does not name."""
        known = {"Slidedat.ini", self.index_path.name, *(p.name for p in self.data_paths)}
        return sorted(p.name for p in self.folder.iterdir() if p.name not in known)

    def _plan_mrxs_file(self, fields: list[Field]) -> None:
        """OpenSlide reads nothing from NAME.mrxs; the output's is empty. Files in the slide
        folder that Slidedat.ini does not name are not part of the slide: not written."""
        for number, extra in enumerate(self.plan_extra_files()):
            fields.append(Field("mirax:extra file", f"slide folder entry {number}", extra, "remove",
                                why="not a file of the slide (Slidedat.ini does not name it)"))
        size = self.path.stat().st_size
        if size:
            data = self.path.read_bytes()[:MAX_TEXT_SCAN]
            fields.append(Field("mirax:.mrxs content", self.path.name, "", "remove",
                                why=f"{size} bytes no reader needs"))
            fields += text_fields(data, "mirax:.mrxs text", self.path.name)[:MAX_TEXT_FIELDS]


def text_fields(data: bytes, name: str, where: str) -> list[Field]:
    """Printable runs (ASCII and UTF-16LE) of bytes that are being removed."""
    runs = {m.group().decode("ascii") for m in TEXT_RUN.finditer(data)}
    runs |= {m.group().decode("utf-16-le") for m in TEXT_RUN_UTF16.finditer(data)}
    return [Field(name, where, run, "remove", why="text in bytes that no kept record uses")
            for run in sorted(runs)]
