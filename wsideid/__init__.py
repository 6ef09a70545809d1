"""wsideid: de-identify whole-slide images."""
import os

__version__ = "0.1.0"

# Slides run in parallel processes, one slide each. numpy's OpenBLAS would start a thread per
# core in every process and keep them busy-waiting after each call (seen as a tenth of a
# batch's CPU time in `perf`), taking the cores from the other slides. It reads this variable
# when numpy is imported, which is after this line in every process of a run.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
