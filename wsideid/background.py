"""A function run in a thread, whose result (or exception) is collected later."""
from __future__ import annotations

import threading


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

    def join(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value
