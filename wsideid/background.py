"""A function run in a thread, whose result (or exception) is collected later."""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor


class Background:
    """Run fn() in a thread; join() returns its result or re-raises what it raised."""

    def __init__(self, fn):
        self.value, self.error = None, None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self) -> None:
        """Let the thread finish, whatever it returns or raises. A C library (OpenSlide) still
        running in a daemon thread while the interpreter shuts down can crash the process."""
        self.thread.join()

    def join(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def checks_in_background(fn, items, workers: int | None = None) -> list[Future]:
    """fn(item) for every item on a few threads (external checkers such as dciodvfy run as
    processes, so threads overlap them); the futures come back in the items' order."""
    pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
    futures = [pool.submit(fn, item) for item in items]
    pool.shutdown(wait=False)
    return futures
