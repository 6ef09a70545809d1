"""Names of TIFF compression schemes and tags, for plans and reports."""
from __future__ import annotations

# TIFF Compression (259) values as registered (TIFF 6.0, TIFF Technical Notes, vendor codes
# seen in slides: Aperio 33003/33005 JPEG 2000, NDPI 22610 JPEG XR).
COMPRESSION = {
    1: "none", 2: "ccittrle", 3: "ccittfax3", 4: "ccittfax4", 5: "lzw", 6: "ojpeg", 7: "jpeg",
    8: "adobe_deflate", 9: "jbig_bw", 10: "jbig_color", 99: "jpeg_99", 103: "impacj",
    262: "kodak_262", 22610: "jpegxr_ndpi", 32766: "next", 32767: "sony_arw",
    32769: "packed_raw", 32770: "samsung_srw", 32771: "ccirlew", 32772: "samsung_srw2",
    32773: "packbits", 32809: "thunderscan", 32895: "it8ctpad", 32896: "it8lw", 32897: "it8mp",
    32898: "it8bl", 32908: "pixarfilm", 32909: "pixarlog", 32946: "deflate", 32947: "dcs",
    33003: "aperio_jp2000_ycbc", 33004: "jpeg_2000_lossy", 33005: "aperio_jp2000_rgb",
    33007: "alt_jpeg", 34661: "jbig", 34676: "sgilog", 34677: "sgilog24", 34692: "luradoc",
    34712: "jpeg2000", 34713: "nikon_nef", 34715: "jbig2", 34718: "mdi_binary",
    34719: "mdi_progressive", 34720: "mdi_vector", 34887: "lerc", 34892: "jpeg_lossy",
    34925: "lzma", 34926: "zstd_deprecated", 34927: "webp_deprecated", 34933: "png",
    34934: "jpegxr", 48124: "jetraw", 50000: "zstd", 50001: "webp", 50002: "jpegxl",
    50013: "pixtiff", 52546: "jpegxl_dng", 65000: "eer_v0", 65001: "eer_v1", 65002: "eer_v2",
}
JPEG_CODES = {6, 7}            # 6: old-style JPEG (JPEGInterchangeFormat streams)
J2K_CODES = {33003, 33004, 33005, 34712}
# Lossless codecs whose streams are checked against the size they must decode to.
LOSSLESS_CODES = {1: "none", 5: "lzw", 8: "deflate", 32946: "deflate", 32773: "packbits"}


def compression_name(code: int | None) -> str:
    if code is None:
        return "none"
    return COMPRESSION.get(code, str(code))


def codec_family(code: int | None) -> str:
    """Which grammar this compression's streams are checked against (images/codestreams.py);
    "other" for the ones without (kept images in them are refused)."""
    if code in JPEG_CODES:
        return "jpeg"
    if code in J2K_CODES:
        return "j2k"
    return LOSSLESS_CODES.get(1 if code is None else code, "other")


def tag_name(code: int) -> str:
    """A tag's registered name (tifffile's registry, loaded only for tags no catalog names)."""
    import tifffile

    name = tifffile.TIFF.TAGS.get(code)
    return name if isinstance(name, str) else f"Tag{code}"
