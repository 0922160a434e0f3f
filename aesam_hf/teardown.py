"""Ending a multi-process CPU run (gloo) without torch 2.13's teardown abort.

After a gloo job that finished and saved, a rank sometimes aborts while the interpreter shuts down ("terminate called
without an active exception", SIGABRT), and the launcher then reports the whole job as failed (docs/reliability.md,
"Clean exit"). Two measures, both only in a gloo process group:

- `destroy_gloo_group_at_exit` (registered by `AESAMTrainer`): destroys the group in an `atexit` hook, while the
  interpreter is still whole. It removed the abort from the bare gloo script and the Trainer jobs we counted, but not
  from every example job.
- `exit_gloo_process` (called by the example scripts and `aesam-run` after a run that returned normally): runs every
  exit handler (that hook, TensorBoard's and wandb's flushes, logging's), flushes the standard streams, then ends the
  process with `os._exit`, so the interpreter's finalization and the C++ static destructors, where the abort happens,
  never run. A run that raised never gets there: its traceback and exit status are Python's own.

No `transformers` import.
"""

import atexit
import logging
import os
import sys

import torch.distributed as dist


_HOOK_REGISTERED = False


def in_gloo_group() -> bool:
    """True in an initialized process group whose backend includes gloo (CPU ranks)."""
    return dist.is_available() and dist.is_initialized() and "gloo" in str(dist.get_backend())


def destroy_gloo_group_at_exit() -> None:
    """Destroy a gloo process group from an `atexit` hook, while the interpreter is still whole; once per process."""
    global _HOOK_REGISTERED
    if _HOOK_REGISTERED:
        return
    _HOOK_REGISTERED = True
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def exit_gloo_process(code: int = 0) -> None:
    """In a gloo process group: run the exit handlers, flush, and end the process with `code`. Elsewhere: return.

    Call it as the last statement of a script's `if __name__ == "__main__":` block, after the run returned normally,
    instead of `dist.destroy_process_group()`: with the group already destroyed there is no gloo group left to detect,
    so it returns and the interpreter's finalization (where the abort happens) runs after all.
    It never returns in a gloo group, so nothing after it runs; exit handlers registered before it do run, in the usual
    (last registered, first run) order.
    """
    if not in_gloo_group():
        return
    destroy_gloo_group_at_exit()  # unless AESAMTrainer registered it already: the group goes while Python is whole
    atexit._run_exitfuncs()  # the handlers `sys.exit` would run (CPython's own entry point for them)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to write to it
            pass
    os._exit(code)
