"""TIFF containers (classic, BigTIFF, NDPI's 64-bit variant): read the structure, patch a copy."""
