"""Storage forms: bytes only, no policy. Each container reads its structure, applies the edits
a plan gives it, and writes through the one file layer (files.py)."""
