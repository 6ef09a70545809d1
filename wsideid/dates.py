"""Dates moved back by a secret number of days, or reduced to their year, in their own format."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta


@dataclass(frozen=True)
class DateFormat:
    """strptime formats tried in order, and what may follow the date: a time of day and a
    time zone, nothing else (a number after a date is not a time)."""
    formats: tuple[str, ...]
    tail: str = r"[ T]([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?"


# Aperio (m/d/y), ISO and EXIF forms, compact and dotted day-first forms.
COMMON = DateFormat(("%m/%d/%y", "%m/%d/%Y", "%Y-%m-%d", "%Y:%m:%d", "%Y/%m/%d", "%Y%m%d",
                     "%d.%m.%Y"))
# MIRAX Slidedat.ini dates are day first ("14/03/2021 13:37:42").
DAY_FIRST = DateFormat(("%d/%m/%Y", "%Y-%m-%d", "%d.%m.%Y"))
# DICOM DA (YYYYMMDD) and DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX, PS3.5 6.2): the time follows directly.
DICOM = DateFormat(("%Y%m%d",), r"(([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?)?([+-]\d{4})?")


def transform_date(value: str, mode: str, shift_days: int, form: DateFormat = COMMON) -> str | None:
    """Shift a date back by `shift_days` or reduce it to January 1st of its year.

    The value keeps its own format (and any time part after the date; with keep-year the
    time's digits become zeros). Returns None when the value is not a date this can parse:
    the caller then removes it."""
    value = value.strip()
    for fmt in form.formats:
        width = len(datetime(2000, 12, 31).strftime(fmt))
        head, tail = value[:width], value[width:]
        try:
            parsed = datetime.strptime(head, fmt).date()
        except ValueError:
            continue
        if tail and not re.fullmatch(form.tail, tail):
            continue
        if mode == "shift":
            new = parsed - timedelta(days=shift_days)
        elif mode == "keep-year":
            new = date(parsed.year, 1, 1)
            tail = re.sub(r"\d", "0", tail)
        else:
            return None
        return new.strftime(fmt) + tail
    return None
