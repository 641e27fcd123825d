"""Data-parallel runs: one model replica per process, lm-eval's requests sharded by rank.

The launcher (``torchrun``, ``accelerate launch``, or submitit's ``TorchDistributedEnvironment`` on Slurm) describes
the processes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
:func:`init_from_env` joins them with ``torch.distributed`` over **gloo** whatever the device: the replicas never
exchange tensors of the model, only a few small objects (request counts, batch sizes, the per-task ledger, LTMP
thresholds), so gloo on the CPU costs nothing measurable and cannot hang in a GPU collective. With ``WORLD_SIZE``
unset or 1 nothing here starts a process group and every function is the single-process identity, so a
single-process run is unchanged bit for bit.

Failures end every rank with the same line (no rank waits forever in a collective): :func:`end_all` publishes the
failing rank's line and exit code in the launcher's key-value store, and a watchdog thread on every rank reads it
and ends its process with that line. The watchdog also notices a rank that vanished without a word (killed: its
process is gone and it never said it finished) and ends the others with a line naming it. All ranks must run on
one machine (the pid check; multi-node is not supported, see the README).

Core layer: imports nothing of tor_exp; torch is imported only when a process group is used.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Any, Iterator, Optional

#: exit status of a rank ended because another rank vanished (killed, out of memory)
PEER_LOST_EXIT = 1
_POLL_S = 0.2
_ERROR_KEY = "error"


class _Session:
    """This process's place in a data-parallel run (only while one is active)."""

    def __init__(self, rank: int, world: int, store: Any) -> None:
        self.rank, self.world, self.store = rank, world, store
        self.closing = threading.Event()
        self.watchdog: Optional[threading.Thread] = None


_session: Optional[_Session] = None


def launched_world_size(environ: Optional[dict[str, str]] = None) -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when unset)."""
    env = os.environ if environ is None else environ
    try:
        return max(1, int(env.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def launched_rank(environ: Optional[dict[str, str]] = None) -> int:
    env = os.environ if environ is None else environ
    try:
        return int(env.get("RANK", "0") or 0)
    except ValueError:
        return 0


def active() -> bool:
    return _session is not None


def rank() -> int:
    """This process's rank (0 outside a data-parallel run)."""
    return _session.rank if _session is not None else 0


def world_size() -> int:
    return _session.world if _session is not None else 1


def is_main() -> bool:
    """Whether this process writes results (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: str) -> str:
    """``cuda`` → this rank's GPU ``cuda:<LOCAL_RANK>`` in a data-parallel run; anything else unchanged."""
    if _session is None or not str(device).startswith("cuda"):
        return device
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    # one GPU visible: the launcher (Slurm's per-task binding) already gave this rank its own
    return f"cuda:{local if torch.cuda.device_count() > local else 0}"


def init_from_env() -> bool:
    """Join the run the launcher describes (once per process); False (and nothing started) for one process."""
    global _session
    if _session is not None:
        return True
    world = launched_world_size()
    if world <= 1:
        return False
    import datetime as dt

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            local = int(os.environ["LOCAL_RANK"])
            torch.cuda.set_device(local if torch.cuda.device_count() > local else 0)  # Slurm may bind one per task
        dist.init_process_group("gloo", timeout=dt.timedelta(minutes=30))
    me = dist.get_rank()
    store = dist.PrefixStore(f"tor_exp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
                             f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}",
                             dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                           is_master=False, timeout=dt.timedelta(seconds=60)))
    store.set(f"pid/{me}", f"{socket.gethostname()} {os.getpid()}")
    _session = _Session(me, dist.get_world_size(), store)
    dist.barrier()  # every rank's pid is in the store before anyone watches
    _session.watchdog = threading.Thread(target=_watch, args=(_session,), name="tor_exp-watchdog", daemon=True)
    _session.watchdog.start()
    return True


def say_before_exit(code: int) -> None:
    """Every rank failed the same check before the run started (a bad override) and has said its line: meet once,
    then leave at once with ``code``, deaf to the launcher's SIGTERM (a launcher ends the other processes at the
    first exit, maybe before they speak, and their exit code would be the signal's). One process: returns."""
    if launched_world_size() <= 1:
        return
    import signal

    try:
        init_from_env()
        barrier()
    except Exception:  # noqa: BLE001  (the line is said; the launcher ends the rest)
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stderr.flush()
    os._exit(code)


def finish() -> None:
    """A rank's normal end: wait for every rank (rank 0 may still be writing), then leave quietly."""
    global _session
    s = _session
    if s is None:
        return
    import torch.distributed as dist

    dist.barrier()
    s.closing.set()
    if s.watchdog is not None:
        s.watchdog.join(timeout=2 * _POLL_S + 1)
    _session = None
    dist.destroy_process_group()


def abandon() -> None:
    """Leave the run without waiting for the others (this rank failed and said so with :func:`end_all`)."""
    global _session
    if _session is not None:
        _session.closing.set()
        _session = None


# ------------------------------------------------------------------------------------------- collectives
def barrier() -> None:
    if _session is not None:
        import torch.distributed as dist

        dist.barrier()


def gather_object(obj: Any, dst: int = 0) -> Optional[list[Any]]:
    """Every rank's ``obj`` in rank order on ``dst`` (None elsewhere); ``[obj]`` for one process."""
    if _session is None:
        return [obj]
    import torch.distributed as dist

    out: Optional[list[Any]] = [None] * _session.world if _session.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself for one process)."""
    if _session is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(tensor: Any) -> Any:
    """Every rank's tensor concatenated along dim 0 in rank order (a scalar counts as one element), on the tensor's
    device: lm-eval's ``LM.all_gather`` (the evaluator gathers its per-rank request counts with it)."""
    if _session is None:
        return tensor
    import torch
    import torch.distributed as dist

    local = tensor.detach().to("cpu").reshape(-1) if tensor.dim() == 0 else tensor.detach().to("cpu")
    parts = [torch.empty_like(local) for _ in range(_session.world)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts).to(tensor.device)


def min_over_ranks(value: int) -> int:
    """The smallest ``value`` of all ranks (``batch_size=auto``: the size every replica can hold)."""
    if _session is None:
        return int(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


# ------------------------------------------------------------------------------------------- failures
def end_all(line: str, code: int, wait_s: float = 2.0) -> None:
    """Tell every other rank to end with ``line`` and exit ``code`` (the first failure wins); a no-op for one
    process. Waits up to ``wait_s`` for the others to have read it (rank 0 may host the store, which ends with
    it); the caller then ends its own process as it would alone."""
    s = _session
    if s is None:
        return
    try:
        if s.store.add("error-claim", 1) != 1:
            return
        s.store.set(_ERROR_KEY, f"{code} {line}")
        deadline = time.monotonic() + wait_s
        while s.store.add("error-seen", 0) < s.world - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # the store is gone: the launcher ends the others
        pass


def failure_line() -> Optional[tuple[str, int]]:
    """The line and exit code this run is ending with, if a rank failed or vanished (None: none did)."""
    s = _session
    if s is None:
        return None
    try:
        if s.store.check([_ERROR_KEY]):
            code, line = s.store.get(_ERROR_KEY).decode().split(" ", 1)
            return line, int(code)
        lost = _lost_rank(s)
    except Exception:  # rank 0's store is gone with it (launchers without an agent store)
        return f"error: rank 0 of {s.world} ended without a word (killed?); the run ends on every rank", \
            PEER_LOST_EXIT
    if lost is not None:
        return lost, PEER_LOST_EXIT
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its launcher, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def _lost_rank(s: _Session) -> Optional[str]:
    host = socket.gethostname()
    for r in range(s.world):
        if r == s.rank:
            continue
        where, pid = s.store.get(f"pid/{r}").decode().rsplit(" ", 1)
        if where == host and not _alive(int(pid)):  # no rank exits before all are in finish()'s barrier
            return (f"error: rank {r} of {s.world} (pid {pid}) ended without a word (killed?); the run ends on "
                    "every rank")
    return None


def _watch(s: _Session) -> None:
    """Poll the store: a published failure or a vanished rank ends this process with the run's one line."""
    while not s.closing.wait(_POLL_S):
        found = failure_line()
        if found is None:
            continue
        if s.closing.wait(_POLL_S * 2):  # the run was ending normally (rank 0's store went away with it)
            return
        line, code = found
        end_all(line, code, wait_s=0)  # a vanished rank: this one publishes it
        try:
            s.store.add("error-seen", 1)
        except Exception:  # noqa: BLE001  (the store went with its host)
            pass
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(code)


def wait_for_failure_line(timeout: float = 1.0) -> Optional[tuple[str, int]]:
    """:func:`failure_line`, waiting up to ``timeout`` for it (a rank ended by its launcher because another one
    failed may be told before the failure is visible)."""
    deadline = time.monotonic() + timeout
    while True:
        found = failure_line()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def ending_together() -> Iterator[None]:
    """Around an entry point's work: a rank that ends normally waits for the others (:func:`finish`); a failing
    one tells them (they end with the same line: a ``fail`` has published it already, anything else is named by
    rank). One process: nothing."""
    try:
        yield
    except SystemExit as err:
        if err.code not in (0, None) and active():
            code = err.code if isinstance(err.code, int) else 1
            end_all(f"error: rank {rank()} failed with exit code {err.code} (its log has the trace)", code)
            _exit_now(code)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        if active():
            first = (str(err).strip().splitlines() or [""])[0]
            end_all(f"error: rank {rank()}: {type(err).__name__}: {first}", 1)
            import traceback

            traceback.print_exc()
            _exit_now(1)
        raise
    finish()


def _exit_now(code: int) -> None:
    """Leave with ``code`` at once: the launcher ends the other ranks as soon as one exits and would end this
    one by signal (its exit code lost) while it unwinds; its line is said and its folder released by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def terminated_with_failure_line() -> Iterator[None]:
    """SIGTERM (a launcher ending this rank because another one failed) → that failure's line and exit code, when
    this is a data-parallel rank and one is known; otherwise SIGTERM as before. For entry points without their
    own SIGTERM handling (``python -m tor_exp`` has it)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        found = wait_for_failure_line() if active() else None
        line, code = found if found is not None else ("interrupted (SIGTERM)", 143)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(code)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
