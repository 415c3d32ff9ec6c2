"""Inside the audit child, before any audited code runs (gradaudit/_child.py): drop privileges, die
with the parent (PR_SET_PDEATHSIG), no core dumps, a PID namespace of its own where allowed, and
RLIMIT_AS / RLIMIT_CPU. Also the two libc calls the judge's side needs (gradaudit/_sandbox.py).
docs/security.md says what each of these stops.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import time

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CAP_DAC_READ_SEARCH = 2
CLONE_NEWPID = 0x20000000


def libc():
    return ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> bool:
    try:
        return libc().prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _keep_only_read_search() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    bit = 1 << CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(bit, bit, 0), Data(0, 0, 0))
    if libc().capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset(CAP_DAC_READ_SEARCH) failed")


def drop_privileges(uid: int, read_all: bool) -> None:
    """Become `uid` (and its gid, no supplementary groups) for good; with `read_all`, keep only
    CAP_DAC_READ_SEARCH. No new privileges afterwards (setuid binaries do not elevate)."""
    if read_all:
        prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if read_all:
        _keep_only_read_search()
        prctl(PR_SET_KEEPCAPS, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def new_pid_namespace() -> bool:
    """unshare(CLONE_NEWPID): this process's next child is PID 1 of a new namespace (root, or a
    user namespace; a seccomp profile may forbid it)."""
    if os.environ.get("GRADAUDIT_NO_PIDNS"):
        return False
    try:
        return libc().unshare(CLONE_NEWPID) == 0
    except (OSError, AttributeError):
        return False


def confine_child(parent_pid: int, uid: int = -1, read_all: bool = False) -> None:
    """Drop privileges; die with the parent; no core dumps; files private to the child."""
    if uid >= 0:
        drop_privileges(uid, read_all)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    if parent_pid and os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(70)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o077)


def address_space() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def limit_memory(extra: int) -> int:
    """RLIMIT_AS (soft and hard: audited code cannot raise it) at what the child has mapped now (the
    interpreter, NumPy, the frameworks it preloaded) plus `extra`. Returns the limit."""
    limit = address_space() + int(extra)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


_cpu_soft_limit: list = [None]  # the soft RLIMIT_CPU this process last set


def limit_cpu(seconds: float) -> None:
    """The next call may use at least `seconds` of CPU time (at most twice that), then SIGXCPU ends the
    child (a second line of defence: the parent's wall-clock timeout is the one audited code cannot
    move). The limit moves only when less than `seconds` is left: three system calls a call cost
    ~1 s of the child's CPU in an audit of the notes."""
    now = time.process_time()  # RLIMIT_CPU's measure: the process's user + system time
    if _cpu_soft_limit[0] is not None and _cpu_soft_limit[0] >= now + seconds:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(now + 2 * seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        _cpu_soft_limit[0] = soft
    except (ValueError, OSError):
        pass


def prepare_frameworks(names, allow_tf32: bool, devices=("cpu",)) -> dict:
    """Import and warm up torch / JAX before the memory limit: their thread pools and first compile
    are the harness's, not the audited code's. Returns, per framework, what the judge writes in its
    records without importing the framework itself (properties.target.Target.framework): why a
    device cannot run it, the devices' names, its precision flags."""
    import oracles
    from properties.config import RunConfig
    from properties.session import apply_precision, prepare_process

    cfg = RunConfig(oracles=tuple(names), allow_tf32=allow_tf32)
    prepare_process(cfg)
    apply_precision(cfg)
    facts = {}
    for name in names:
        oracle, unavailable, device_names = oracles.get(name), {}, {}
        for device in devices:
            try:
                oracle.check_available(device)  # imports the framework: the settings above apply
                device_names[device] = oracle.device_name(device)
            except oracles.OracleUnavailable as e:
                unavailable[device] = str(e)
            except Exception as e:  # noqa: BLE001  a broken install: its sides skip with the reason
                unavailable[device] = f"{name}: {type(e).__name__}: {e}"
        try:
            flags = oracle.flags() if len(unavailable) < len(devices) else {}
        except Exception:  # noqa: BLE001
            flags = {}
        facts[name] = {"unavailable": unavailable, "device_names": device_names, "flags": flags}
    if "torch" in names and "cpu" not in facts["torch"]["unavailable"]:
        try:
            import torch

            t = torch.ones(2, requires_grad=True)
            (t * t).sum().backward()
        except Exception:
            pass
    if "jax" in names and "cpu" not in facts["jax"]["unavailable"]:
        try:
            import jax
            import numpy as np

            jax.jit(lambda x: jax.vjp(jax.numpy.sin, x)[1](x))(np.ones(2))
        except Exception:
            pass
    return facts


def _reaper(child: int, status_fd: int) -> None:
    """PID 1 of the child's PID namespace: reap whatever ends in it until `child` (the server) ends,
    hand its wait status on, and exit, which ends every process left in the namespace."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 0
            break
        if pid == child:
            break
    os.write(status_fd, status.to_bytes(4, "little", signed=True))
    os._exit(0)


def _end_as(status: int) -> None:
    """Exit the way a process with wait status `status` ended (its code, or its signal), so that the
    judge names the right death."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)


def in_own_pid_namespace(req: int, rep: int) -> bool:
    """As root: this process stays outside (dying with the judge) and the server runs in a PID
    namespace of its own, under a reaper; when this process dies, for any reason, the kernel ends the
    namespace and everything the audited code started in it (a daemon's double fork included).
    Returns True in the server, does not return elsewhere; False where namespaces are not allowed."""
    if not new_pid_namespace():
        return False
    status_r, status_w = os.pipe()
    reaper = os.fork()
    if reaper:  # outside: wait, then end as the server ended
        for fd in (req, rep, status_w):
            os.close(fd)
        os.waitpid(reaper, 0)
        got = os.read(status_r, 4)
        _end_as(int.from_bytes(got, "little", signed=True) if len(got) == 4 else 9)
    confine_child(0)  # the reaper dies with the process outside
    os.close(status_r)
    server = os.fork()
    if server:
        for fd in (req, rep):
            os.close(fd)
        _reaper(server, status_w)
    os.close(status_w)
    return True
