"""A rank that waits on the others longer than ``--dist_timeout`` stops and says where (issue 22).

The parts of a run where a rank waits for the other ranks run inside ``waiting(op)``: a training
step (forward, backward, the gradient all-reduce, the optimizer step), the gather of the logged
losses, an evaluation, a checkpoint save (each of its agreements), a resume's verification and
load, the engine start and the final export. A watchdog thread checks the innermost region once a
second; when one has lasted longer than the timeout it prints, on stderr,

    rank 1: step 12: waited 1800 s in 'saving checkpoint step_00000012: writing', longer than
    --dist_timeout=1800 s: another rank did not join (it failed, hangs, or skipped this
    collective); stopping this rank

and ends the process with exit code ``EXIT_CODE`` (``os._exit``: the main thread is blocked in
the collective and cannot unwind). The DeepSpeed launcher then ends the job: it sends SIGTERM to
the other ranks, and a rank stopped that way while in a region prints its rank, step and
operation too before it exits (the signal reaches the watchdog thread through
``signal.set_wakeup_fd``, since the blocked main thread cannot run a Python handler). The process
group's own timeout (``process_group_timeout``) is set a little longer, so this message comes
first; a backend that raises its timeout in the main thread is reported the same way.

The timeout must outlast the longest legitimate wait: the first compiled step, a checkpoint
save, rank 0's universal-checkpoint conversion while the others wait, rank 0's final export
(README, "Reliability"). Outside these regions (data preparation, set-up) nothing is watched.

Test hook: ``LXMERT_FAST_TEST_SKIP_COLLECTIVE="RANK:OP PREFIX"`` makes that rank skip the object
gathers (checkpoint agreements and verification) it would enter inside a region whose op starts
with the prefix and enter a barrier instead: the shape of the hang of issue 22 (tests only).
"""
import os
import re
import select
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import List, Optional, Tuple

DEFAULT_TIMEOUT_S = 1800.0
EXIT_CODE = 75
SKIP_ENV = "LXMERT_FAST_TEST_SKIP_COLLECTIVE"


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within --dist_timeout (raised where the backend raises)."""


class _Watch:
    def __init__(self):
        self.lock = threading.Lock()
        self.stack: List[Tuple[str, float]] = []
        self.step: Optional[int] = None
        self.timeout: Optional[float] = None
        self.rank = 0
        self.thread: Optional[threading.Thread] = None
        self.wakeup: Optional[int] = None          # read end of the signal wakeup pipe
        self.longest: dict = {}                    # op kind -> (seconds, op) of its longest


_watch = _Watch()


def configure(timeout_s: float, rank: int) -> None:
    """Arm the watchdog of this process (once; a later call changes timeout and rank)."""
    if not timeout_s > 0:
        raise ValueError(f"--dist_timeout={timeout_s} must be > 0 seconds")
    _watch.timeout, _watch.rank = float(timeout_s), int(rank)
    if _watch.thread is None:
        if threading.current_thread() is threading.main_thread():
            _catch_sigterm()
        _watch.thread = threading.Thread(target=_run, name="dist-watchdog", daemon=True)
        _watch.thread.start()


def _catch_sigterm() -> None:
    """SIGTERM (the launcher ending the job) wakes the watchdog thread, which reports where this
    rank was; forked children (DataLoader workers) get the default handling back."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _watch.wakeup = read
    os.register_at_fork(after_in_child=_reset_in_child)


def _reset_in_child() -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _watch.thread, _watch.wakeup = None, None


def _on_sigterm(signum, frame) -> None:   # the main thread got to run it: same report
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    now = current()
    if now is not None:
        step = "before the first step" if _watch.step is None else f"step {_watch.step}"
        sys.stderr.write(f"rank {_watch.rank}: {step}: stopped by SIGTERM (the launcher ends the "
                         f"job: another rank failed or timed out) after {now[1]:.0f} s in "
                         f"'{now[0]}'\n")
        sys.stderr.flush()
    sys.stdout.flush()
    os._exit(128 + signal.SIGTERM)


def process_group_timeout(timeout_s: float) -> timedelta:
    """The backend's own timeout: a margin after the watchdog's (10%, at least 30 s)."""
    return timedelta(seconds=float(timeout_s) + max(30.0, 0.1 * float(timeout_s)))


def set_step(step: int) -> None:
    _watch.step = int(step)


def current() -> Optional[Tuple[str, float]]:
    """(op, seconds waited) of the innermost region, or None outside any."""
    with _watch.lock:
        if not _watch.stack:
            return None
        op, since = _watch.stack[-1]
    return op, time.monotonic() - since


def message(op: str, waited: float) -> str:
    step = "before the first step" if _watch.step is None else f"step {_watch.step}"
    return (f"rank {_watch.rank}: {step}: waited {waited:.0f} s in '{op}', longer than "
            f"--dist_timeout={_watch.timeout:.0f} s: another rank did not join (it failed, "
            f"hangs, or skipped this collective); stopping this rank")


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text or type(error).__name__ == "DistTimeoutError"


def _is_backend_error(error: BaseException) -> bool:
    """A collective failed: the backend's error types, or gloo's/NCCL's peer-lost messages."""
    text = str(error)
    return (type(error).__name__ in ("DistError", "DistBackendError", "DistNetworkError")
            or "Connection closed by peer" in text or "gloo" in text or "NCCL" in text)


@contextmanager
def waiting(op: str):
    """A region where this rank may wait for the others (see the module docstring)."""
    with _watch.lock:
        _watch.stack.append((op, time.monotonic()))
    try:
        yield
    except Exception as e:
        if _watch.timeout is None or isinstance(e, CollectiveTimeout):
            raise
        now = current()
        waited = now[1] if now else 0.0
        if _is_timeout(e):
            text = message(op, waited)
            print(text, file=sys.stderr, flush=True)
            raise CollectiveTimeout(text) from e
        if _is_backend_error(e):      # a peer left (it failed or timed out): say where we were
            step = "before the first step" if _watch.step is None else f"step {_watch.step}"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"rank {_watch.rank}: {step}: a collective failed after {waited:.0f} s in "
                  f"'{op}' (another rank left the job): {first[:300]}", file=sys.stderr,
                  flush=True)
        raise
    finally:
        with _watch.lock:
            _, since = _watch.stack.pop()
            _note(op, time.monotonic() - since)


def _note(op: str, seconds: float) -> None:
    kind = re.sub(r"\d+", "N", op)
    if seconds > _watch.longest.get(kind, (-1.0, op))[0]:
        _watch.longest[kind] = (seconds, op)


def longest_waits(top: int = 4) -> str:
    """The longest regions of this process so far, longest first (what --dist_timeout must
    outlast), e.g. "saving checkpoint step_00000100: writing 3.2 s, ..."."""
    worst = sorted(_watch.longest.values(), reverse=True)[:top]
    return ", ".join(f"{op} {seconds:.1f} s" for seconds, op in worst)


def skip_collective() -> bool:
    """True when the test hook makes this rank skip the collectives of the current region."""
    hook = os.environ.get(SKIP_ENV)
    if not hook:
        return False
    rank, _, prefix = hook.partition(":")
    now = current()
    return (rank.strip() == str(_watch.rank) and now is not None
            and now[0].startswith(prefix.strip()))


def _sleep(seconds: float) -> None:
    """Sleep, or stop this rank when SIGTERM arrives on the wakeup pipe."""
    if _watch.wakeup is None:
        time.sleep(seconds)
        return
    ready, _, _ = select.select([_watch.wakeup], [], [], seconds)
    if ready and signal.SIGTERM in os.read(_watch.wakeup, 64):
        _stop_on_sigterm()


def _run() -> None:
    while True:
        timeout = _watch.timeout
        _sleep(1.0 if timeout is None else min(1.0, timeout / 20))
        now = current()
        if timeout is None or now is None or now[1] <= timeout:
            continue
        sys.stderr.write(message(*now) + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # the other ranks waiting since about the same moment report for themselves first
        time.sleep(min(5.0, 0.25 * timeout))
        os._exit(EXIT_CODE)
