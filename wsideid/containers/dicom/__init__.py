"""DICOM Part 10 files: headers through pydicom, pixel data located and copied as bytes."""
