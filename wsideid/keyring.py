"""Every keyed derivation: slide pseudonyms, file UUIDs, vendor slide identifiers, DICOM UIDs
and identifiers, and the date shift.

The key is secret bytes kept by the user (`--key-file`). With the same key, the same slide gets
the same pseudonym, UIDs and date shift, so separate runs stay consistent; without a key, a
fresh random key is used and nothing links two runs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import unicodedata
import uuid
from pathlib import Path

FINGERPRINT_SPAN = 1 << 20
MAX_SHIFT_DAYS = 3650
FOLDER_PREFIX = "dir-"


MIN_KEY = 16
MAX_KEY_FILE = 4096


def load_key(path: Path | None, create: bool = True) -> bytes:
    """The secret key: from the key file (created with a random key, readable by its owner
    only, when missing; with `create` False a missing file gives a fresh key, not written),
    else from WSIDEID_KEY, else a fresh random key. Either must hold at least 16 bytes. A
    problem is a ValueError (its message names the file or the variable) or an OSError of the
    key file."""
    import stat

    if path is not None and not create and not os.path.lexists(path):
        return secrets.token_bytes(32)

    if path is None:
        env = os.environ.get("WSIDEID_KEY")
        if env is None:
            return secrets.token_bytes(32)
        key = env.strip().encode("utf-8", "surrogateescape")
        if len(key) < MIN_KEY:
            raise ValueError(f"WSIDEID_KEY: the key is too short ({len(key)} bytes; need at "
                             f"least {MIN_KEY})")
        return key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: the key file is not a regular file")
        if st.st_size > MAX_KEY_FILE:
            raise ValueError(f"{path}: the key file is too large to be a key "
                             f"({st.st_size} bytes; a key file holds at most {MAX_KEY_FILE})")
        key = os.read(fd, MAX_KEY_FILE + 1).strip()
    finally:
        os.close(fd)
    if len(key) < MIN_KEY:
        raise ValueError(f"{path}: the key is too short ({len(key)} bytes; need at least "
                         f"{MIN_KEY})")
    return key


def fingerprint(path: Path) -> bytes:
    """A content fingerprint: size plus the first and last MiB (renaming does not change it)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            fh.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
            h.update(fh.read(FINGERPRINT_SPAN))
    return h.digest()


class Keyring:
    def __init__(self, key: bytes):
        self.key = key

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self.key, purpose.encode() + b"\x00" + data, hashlib.sha256).digest()

    def slide_pseudonym(self, fp: bytes) -> str:
        code = base64.b32encode(self._mac("slide", fp)[:10]).decode().lower()
        return f"wsi-{code[:16]}"

    def file_uuid(self, fp: bytes) -> str:
        """A new, stable UUID for the output file (OME UUID)."""
        return f"urn:uuid:{uuid.UUID(bytes=self._mac('uuid', fp)[:16], version=4)}"

    def slide_identifier(self, fp: bytes, like: str) -> str:
        """A stable replacement for a vendor's slide identifier, as long as the original (MIRAX
        repeats it at fixed offsets) and, like it, lower- or upper-case hex."""
        size = len(like.encode("utf-8"))
        digits = (self._mac("slide-id", fp).hex() * (size // 64 + 1))[:size]
        return digits.upper() if like.isupper() else digits

    def date_shift_days(self, subject: str = "") -> int:
        """Days to move every date back by: 1..3650, fixed for a key and a subject (the released
        name of a subject's folder or its pseudonym from a mapping). Without a subject, the
        key's own shift (slides named one by one or lying directly in an input folder)."""
        return 1 + int.from_bytes(self._mac("date-shift", subject.encode("utf-8", "surrogateescape"))[:4], "big") % MAX_SHIFT_DAYS

    def folder_pseudonym(self, name: str) -> str:
        """The released name of a folder of an input tree: the same name gets the same
        pseudonym wherever it is, in every run with the same key (Unicode NFC, so that a name
        written by macOS, decomposed, and the same name composed are one)."""
        code = base64.b32encode(self._mac("folder", unicodedata.normalize("NFC", name).encode("utf-8", "surrogateescape"))[:10])
        return f"{FOLDER_PREFIX}{code.decode().lower()[:16]}"

    def file_pseudonym(self, name: str) -> str:
        """The pseudonymous name a file that is not a slide is listed under (never written)."""
        code = base64.b32encode(self._mac("file", unicodedata.normalize("NFC", name).encode("utf-8", "surrogateescape"))[:10])
        return f"file-{code.decode().lower()[:16]}"

    def digest(self, purpose: str, data: bytes) -> str:
        """A keyed digest that says nothing without the key (journal records of a run)."""
        return self._mac(purpose, data)[:16].hex()

    def uid(self, old: str) -> str:
        """The replacement of a DICOM UID: the same old UID maps to the same new one."""
        digest = hmac.new(self.key, b"uid\x00" + old.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def identifier(self, kind: str, value: str) -> str:
        """A keyed pseudonym for an identifier of one kind (patient, accession, ...)."""
        digest = hmac.new(self.key, f"{kind}\x00{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return f"{kind[:3].upper()}-{digest[:12].upper()}"

    def uid_sequence(self, fp: bytes):
        """A generator of new UIDs for the instances made from one source (conversion): the
        n-th UID is the same on every run with the same key and source."""
        n = 0
        while True:
            n += 1
            digest = hmac.new(self.key, fp + n.to_bytes(8, "big"), hashlib.sha256).digest()
            yield "2.25." + str(int.from_bytes(digest[:16], "big"))
