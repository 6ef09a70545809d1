"""Reports of a run: the audit JSON (audit.py)."""
