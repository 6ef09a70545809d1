"""What an interrupt (Ctrl-C, SIGTERM) does to the command: SIGTERM is taken as Ctrl-C, and an
answered interrupt ends the process with exit 130."""
import signal
import sys


def terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def exit_interrupted() -> None:
    """Exit 130 after an interrupt that was answered. Not sys.exit: CPython marks the process
    as ended by Ctrl-C when the interrupt was raised inside code run by exec or eval (a
    dataclass being built, an annotation evaluated) and then kills itself with SIGINT at
    exit, even though the interrupt was handled (Python/pythonrun.c, run_eval_code_obj). What
    the interpreter's exit does is done here first: threads joined (a process pool's manager),
    exit functions run (multiprocessing releases its semaphores), streams flushed."""
    import atexit
    import os
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        threading._shutdown()        # what Py_FinalizeEx calls first (wait_for_thread_shutdown)
    except Exception:  # noqa: BLE001 - an exit continues whatever a thread did
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)
