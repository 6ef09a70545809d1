"""The QC page of a run: one row per slide with what was released (its thumbnail, the overview
and label images it still holds), the actions, warnings first, and the verification result;
filterable; every image embedded, nothing fetched from anywhere.

The page is built from OUTDIR alone (its audit report and the released slides), so it shows
nothing the release does not hold. The identifying "before" pictures (the original label and
overview of each input) go into a separate page (`before_page`) that is kept with the map,
never under OUTDIR.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

PICTURE_SIZE = 240
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
.meta { color: #555; margin-bottom: 1em; }
.meta code { background: #f3f3f3; padding: 0 .3em; }
.filters { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; }
.filters input[type=search] { width: 24em; padding: .3em; }
table { border-collapse: collapse; width: 100%; margin-top: .5em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .4em; vertical-align: top; text-align: left; }
th { background: #fafafa; position: sticky; top: 2.6em; }
td.pic img { max-width: 240px; max-height: 240px; border: 1px solid #ccc; display: block; }
td.pic span { color: #999; }
.status { font-weight: 600; padding: .1em .4em; border-radius: .3em; }
.alarm { background: #fdd; border: 2px solid #b00; padding: .5em; margin: .5em 0; font-weight: 600; }
.ok { background: #e6f4ea; color: #1e6b34; }
.failed, .error { background: #fde7e7; color: #a11; }
.warn { background: #fff4d6; color: #7a5a00; }
ul { margin: 0; padding-left: 1.1em; }
.path { font-family: ui-monospace, monospace; word-break: break-all; }
"""

SCRIPT = """
function applyFilter() {
  const text = document.getElementById('filter').value.toLowerCase();
  const problems = document.getElementById('problems').checked;
  let shown = 0;
  for (const row of document.querySelectorAll('tr.slide')) {
    const match = row.textContent.toLowerCase().includes(text)
      && (!problems || row.dataset.problem === '1');
    row.style.display = match ? '' : 'none';
    if (match) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', applyFilter);
"""


def pictures(path: Path, size: int = PICTURE_SIZE) -> dict[str, bytes]:
    """JPEG pictures of a slide as a reader shows it: 'thumbnail' (the whole slide, small)
    and each associated image it holds (label, macro, ...). {} when nothing can be read."""
    try:
        return _openslide_pictures(path, size)
    except Exception:  # noqa: BLE001 - any reader failure: try the next reader
        pass
    try:
        return _tiff_pictures(path, size)
    except Exception:  # noqa: BLE001 - a picture is a courtesy, never a failure
        return {}


def _jpeg(image, size: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def _openslide_pictures(path: Path, size: int) -> dict[str, bytes]:
    import openslide

    if path.is_dir():   # a DICOM slide: OpenSlide opens one instance and finds the others
        path = sorted(path.glob("*.dcm"))[0]
    slide = openslide.OpenSlide(str(path))
    try:
        out = {"thumbnail": _jpeg(slide.get_thumbnail((size, size)), size)}
        for name, image in sorted(slide.associated_images.items()):
            if name != "thumbnail":
                out[name] = _jpeg(image, size)
        return out
    finally:
        slide.close()


def _tiff_pictures(path: Path, size: int) -> dict[str, bytes]:
    """A TIFF OpenSlide does not open (OME-TIFF): the smallest level of the first image and
    every other image by its name."""
    import tifffile
    from PIL import Image

    out = {}
    with tifffile.TiffFile(path) as tf:
        for n, series in enumerate(tf.series):
            level = series.levels[-1] if series.levels else series
            if level.shape[0] * level.shape[1] > 64_000_000:
                continue
            data = level.asarray()
            if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[-1] not in (3, 4):
                data = data.transpose(1, 2, 0)
            name = "thumbnail" if n == 0 else (series.name or f"image {n}").lower()
            out[name] = _jpeg(Image.fromarray(data[..., :3] if data.ndim == 3 else data), size)
    return out


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return f"<span>no {html.escape(alt)}</span>"
    return (f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,'
            f'{base64.b64encode(data).decode()}">')


def _problem(entry: dict) -> bool:
    return entry.get("status") != "ok" or bool(entry.get("warnings"))


def unreleased_files(report: dict, outdir: Path, skip: tuple[Path, ...] = ()) -> tuple[list[Path], list[Path]]:
    """Files under OUTDIR that no slide of the report accounts for: temporary files an
    interrupted run left (they may hold a slide's identifiers) and any other file (copied in
    by hand, or left by an earlier run the report does not cover). The run's own record
    (.wsideid), the report and the `skip` paths are no slides' files."""
    from ..batch import temporary

    released = {e["path"] for e in report.get("slides", []) if e.get("status") == "ok" and e.get("path")}
    # a MIRAX slide's data folder is named by its .mrxs file; a DICOM series is a folder
    released |= {p[:-len(".mrxs")] for p in released if p.lower().endswith(".mrxs")}
    own = {outdir / "wsideid-report.json", *skip}
    leftovers, foreign = [], []
    for folder, dirs, files in os.walk(outdir):
        here = Path(folder)
        if here == outdir:
            dirs[:] = [d for d in dirs if d != ".wsideid"]
        for name in files:
            path = here / name
            rel = path.relative_to(outdir)
            # the file itself, or a folder above it, is a released slide (set lookups: a
            # release of tens of thousands of slides)
            if path in own or any(p.as_posix() in released for p in (rel, *rel.parents)):
                continue
            if temporary(name):
                leftovers.append(path)
            elif page_kind(path) != "qc":     # an earlier QC page: built from OUTDIR alone
                foreign.append(path)
    return sorted(leftovers), sorted(foreign)


def page_kind(path: Path) -> str | None:
    """"qc" or "before" for a page wsideid wrote (its title, near the start), else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if not head.startswith(b"<!DOCTYPE html>"):
        return None
    if b"<title>wsideid QC" in head:
        return "qc"
    return "before" if b"<title>wsideid: the inputs before" in head else None


def qc_page(report: dict, outdir: Path, picture=pictures, unreleased: tuple[int, int] = (0, 0)) -> str:
    """The QC page of OUTDIR's report: failures and slides with warnings first."""
    slides = sorted(report.get("slides", []), key=lambda e: (
        e.get("status") == "ok", not e.get("warnings"), e.get("path") or ""))
    rows = []
    for n, entry in enumerate(slides):
        pics = picture(outdir / entry["path"]) if entry.get("status") == "ok" and entry.get("path") else {}
        overview = next((pics[k] for k in ("macro", "overview") if k in pics), None)
        label = pics.get("label")
        status = entry.get("status", "?")
        verification = entry.get("verification", {}).get("result", "not run")
        warnings = list(entry.get("warnings") or [])
        if entry.get("message"):
            warnings.insert(0, entry["message"])
        actions = ", ".join(f"{k} {v}" for k, v in sorted((entry.get("actions") or {}).items()))
        images = "".join(f"<li>{html.escape(i['index'])}: {html.escape(i['role'])} "
                         f"{i['width']}x{i['height']} &rarr; {html.escape(i['action'])}</li>"
                         for i in entry.get("images", []))
        flag = '<br><span class="status warn">warnings</span>' if entry.get("warnings") else ""
        listed = ("<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"
                  if warnings else "")
        rows.append(
            f'<tr class="slide" id="slide-{n}" data-problem="{int(_problem(entry))}">'
            f'<td><span class="status {html.escape(status)}">{html.escape(status)}</span>{flag}</td>'
            f'<td class="path">{html.escape(entry.get("path") or "(not released)")}<br>'
            f'{html.escape(entry.get("format", ""))}</td>'
            f'<td class="pic">{_img(pics.get("thumbnail"), "thumbnail")}</td>'
            f'<td class="pic">{_img(overview, "overview")}</td>'
            f'<td class="pic">{_img(label, "label")}</td>'
            f'<td>{listed}'
            f'<b>fields</b>: {html.escape(actions) or "-"}<br><b>images</b><ul>{images}</ul></td>'
            f'<td><span class="status {"ok" if verification == "passed" else "failed"}">'
            f'{html.escape(verification)}</span></td></tr>')
    others = "".join(f'<tr><td class="path">{html.escape(o["path"])}</td><td>{html.escape(o["why"])}</td></tr>'
                     for o in report.get("not_slides", []))
    options = ", ".join(f"<code>{html.escape(k)}={html.escape(json.dumps(v))}</code>"
                        for k, v in report.get("options", {}).items())
    catalogs = ", ".join(f"<code>{html.escape(k)}</code> {html.escape(v.get('version') or '')} "
                         f"(sha256 {html.escape(v.get('sha256', '')[:12])})"
                         for k, v in report.get("catalogs", {}).items())
    summary = report.get("summary", {})
    leftovers, foreign = unreleased
    alarm = (f'<div class="alarm">The released folder is not ready: it holds {leftovers} '
             f'temporary file(s) of an interrupted run (they may hold identifiers: run the same '
             f'deid command again to finish it) and {foreign} file(s) no wsideid run released. '
             f'`wsideid report` lists them on its error output.</div>'
             if leftovers or foreign else "")
    others_table = (f"<h2>Files that are not slides (not copied)</h2><table><tbody>{others}"
                    "</tbody></table>" if others else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>wsideid QC: {summary.get('ok', 0)} released, {summary.get('failed', 0)} failed</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head>
<body>
<h1>wsideid quality control</h1>
{alarm}<div class="meta">wsideid {html.escape(str(report.get('version', '')))}, report of
{html.escape(str(report.get('run', '')))}: <b>{summary.get('ok', 0)}</b> slides released,
<b>{summary.get('failed', 0)}</b> failed, {len(report.get('not_slides', []))} files not slides
(not copied).<br>Options: {options}<br>Catalogs: {catalogs}</div>
<div class="filters"><input type="search" id="filter" placeholder="filter: path, format, warning, action"
 oninput="applyFilter()"> <label><input type="checkbox" id="problems" onchange="applyFilter()">
 only failures and warnings</label> &nbsp; <span id="shown">{len(rows)}</span> of {len(rows)} slides shown</div>
<table id="slides"><thead><tr><th>status</th><th>released as</th><th>thumbnail</th>
<th>overview (as released)</th><th>label (as released)</th><th>actions and warnings</th>
<th>verification</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
{others_table}
</body></html>
"""


def before_page(report: dict, sources: dict[str, Path], picture=pictures) -> str:
    """The identifying page: for each released slide, the original's label, overview and
    thumbnail beside its released path. `sources` maps released paths to input paths (from
    the map). Keep it with the map, never under OUTDIR."""
    rows = []
    for entry in sorted(report.get("slides", []), key=lambda e: e.get("path") or ""):
        source = sources.get(entry.get("path") or "")
        if source is None:
            continue
        pics = picture(source)
        overview = next((pics[k] for k in ("macro", "overview") if k in pics), None)
        rows.append(f'<tr class="slide"><td class="path">{html.escape(entry["path"])}<br>&larr; '
                    f'{html.escape(str(source))}</td>'
                    f'<td class="pic">{_img(pics.get("thumbnail"), "thumbnail")}</td>'
                    f'<td class="pic">{_img(overview, "overview")}</td>'
                    f'<td class="pic">{_img(pics.get("label"), "label")}</td></tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>wsideid: the inputs before de-identification (identifying)</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head>
<body><h1>Before de-identification: IDENTIFYING, keep with the map</h1>
<div class="filters"><input type="search" id="filter" placeholder="filter" oninput="applyFilter()">
<label><input type="checkbox" id="problems" onchange="applyFilter()"> -</label>
<span id="shown">{len(rows)}</span> of {len(rows)} slides shown</div>
<table><thead><tr><th>released as &larr; input</th><th>thumbnail</th><th>overview</th><th>label</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></body></html>
"""
