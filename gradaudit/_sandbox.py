"""Starting, confining and ending the process that runs audited code (docs/security.md).

Parent side (`spawn`, `ChildProcess.kill_tree`): a minimal environment, a fresh scratch directory as
working directory and HOME, its own session, an unprivileged uid when gradaudit runs as root, and
every descendant tracked so that it can be killed: in a cgroup of its own where the cgroup v2
hierarchy is writable (killed with `cgroup.kill`), else by making this process a child subreaper
(orphans of the child are re-parented here, not to init) and sweeping the process tree. With
`sandbox="bwrap"` the child runs under bubblewrap: read-only filesystem but for its scratch
directory, no network, its own PID namespace (all of it dies with the sandbox).

The child's side (privileges, limits, dying with the parent) is gradaudit/_confine.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._confine import PR_SET_CHILD_SUBREAPER, prctl

NOBODY = 65534
DEFAULT_MEMORY = 4 << 30
# what the harness itself needs in the child's environment; everything else is left behind
# (`--pass-env NAME` adds one): CI tokens, cloud keys and the like never reach audited code
HARNESS_ENV = ("PATH", "LANG", "LC_ALL", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "GRADAUDIT_TORCH_THREADS")
_ROOT = str(Path(__file__).resolve().parent.parent)  # the checkout holding gradaudit, properties, oracles
_serial = itertools.count()


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5G', '1073741824' -> bytes."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:] if t else "", 1)
    number = t[:-1] if scale != 1 else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 4G)") from None
    if not value > 0:
        raise ValueError(f"not a positive size: {text!r}")
    return int(value * scale)


@dataclasses.dataclass(frozen=True)
class Confinement:
    """How the child is confined (the `audit` options)."""

    memory_limit: int = DEFAULT_MEMORY  # address space the audited code may add to the child's own
    pass_env: tuple = ()  # extra environment variables to hand over (`--pass-env`)
    sandbox: str = "process"  # "process" | "bwrap"
    timeout: float = 60.0  # seconds per call (`--timeout`)
    frameworks: tuple = ()  # frameworks the child preloads (torch, jax): derivations' forwards run there
    allow_tf32: bool = False
    jax_cache: str | None = None  # the child's own persistent JAX cache (never the parent's)
    devices: tuple = ("cpu",)  # where the frameworks run (the judge's records name them as the child says)


def drops_privileges() -> bool:
    return os.geteuid() == 0


def _others_can_read(path: str) -> bool:
    """Can an unprivileged uid reach and read `path` (every ancestor searchable by others)?"""
    import stat

    p = Path(path)
    try:
        p = p.resolve()
        for d in [*reversed(p.parents), p]:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH or (d == p and not mode & stat.S_IROTH):
                return False
    except OSError:
        return True  # not there: nothing to read
    return True


def needs_read_access() -> bool:
    """Whether the unprivileged child could not reach the interpreter or the packages (a Python
    installed under /root, mode 0700): then it keeps CAP_DAC_READ_SEARCH (read anything, write only
    what nobody may write)."""
    paths = {os.path.dirname(os.path.realpath(sys.executable)), sys.prefix, sys.base_prefix, _ROOT,
             *(p for p in sys.path if p and os.path.isdir(p))}
    return not all(_others_can_read(p) for p in paths)


# ---- descendants: a cgroup, else a subreaper and a sweep ---------------------------------------

def _cgroup_base() -> Path | None:
    if os.environ.get("GRADAUDIT_NO_CGROUP"):
        return None
    try:
        mount = next(line.split()[4] for line in open("/proc/self/mountinfo")
                     if line.split(" - ")[1].split()[0] == "cgroup2")
        own = next(line.split("::", 1)[1].strip() for line in open("/proc/self/cgroup") if line.startswith("0::"))
    except (OSError, StopIteration, IndexError):
        return None
    base = Path(mount) / own.lstrip("/")
    return base if os.access(base, os.W_OK) else None


def _make_cgroup() -> Path | None:
    base = _cgroup_base()
    if base is None:
        return None
    for old in base.glob("gradaudit-*-*"):  # left by a judge that was SIGKILLed: end what is left in it
        try:
            os.kill(int(old.name.split("-")[1]), 0)
        except ProcessLookupError:
            try:
                (old / "cgroup.kill").write_text("1")
            except OSError:
                pass
            _remove_cgroup(old, tries=3)
        except (ValueError, PermissionError):
            pass
    path = base / f"gradaudit-{os.getpid()}-{next(_serial)}"
    try:
        path.mkdir()
    except OSError:
        return None
    if not (path / "cgroup.procs").exists():
        _remove_cgroup(path)
        return None
    return path


def _remove_cgroup(path: Path, tries: int = 300) -> None:
    for _ in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, uid) of every process we can see."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            out[int(entry)] = (int(fields[1]), os.stat(f"/proc/{entry}").st_uid)
        except (OSError, ValueError, IndexError):
            continue
    return out


def _descendants(root: int, table: dict) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


_subreaper = False


def become_subreaper() -> None:
    """Orphans of our children come to this process instead of init, so that a sweep finds them
    (a process started with start_new_session=True, or a daemon that forked twice)."""
    global _subreaper
    if not _subreaper:
        _subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1)


_live_children: set[int] = set()  # pids of the audit children of this process


class ChildProcess:
    """A started child: its Popen, the two pipe ends the parent keeps, the token, and how to end it
    with everything it started."""

    def __init__(self, proc, req_w: int, rep_r: int, token: bytes, scratch: str, cgroup: Path | None,
                 uid: int | None, stderr):
        self.proc, self.req_w, self.rep_r, self.token = proc, req_w, rep_r, token
        self.scratch, self.cgroup, self.uid, self.stderr = scratch, cgroup, uid, stderr

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n: int = 600) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read()[-n:].decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def kill_tree(self) -> None:
        """SIGKILL the child and every process it started, reap them, remove the scratch directory."""
        pid = self.proc.pid
        if self.cgroup is not None:
            self._kill_cgroup()
        for _ in range(20):  # a fork loop may outrun one pass
            table = _proc_table()
            victims = _descendants(pid, table) | ({pid} if self.proc.poll() is None else set())
            # orphans re-parented to this process (we are their subreaper), started by the child
            victims |= {p for p, (pp, uid) in table.items() if pp == os.getpid() and p not in _live_children
                        and (self.uid is None or uid == self.uid)}
            for p in victims:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for p in victims - {pid}:  # reap the orphans that were ours
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
            if not victims:
                break
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _live_children.discard(pid)
        for fd in (self.req_w, self.rep_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.req_w = self.rep_r = -1
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)
            self.cgroup = None
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            self.stderr.close()
        except OSError:
            pass

    def _kill_cgroup(self) -> None:
        kill = self.cgroup / "cgroup.kill"
        try:
            if kill.exists():
                kill.write_text("1")
            else:
                for _ in range(20):
                    pids = [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
                    if not pids:
                        break
                    for p in pids:
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        except OSError:
            pass


def child_jax_cache(texts: list[bytes], sandbox: str, keep: int = 16) -> str | None:
    """The child's persistent JAX cache: never the judge's own (a child able to write there could plant
    compiled code that the judge's JAX oracle would run), one per audited source text (a submission
    cannot prepare another's), the `keep` most recently used kept."""
    from properties.session import jax_cache_dir

    base = jax_cache_dir()
    if base is None:
        return None
    digest = hashlib.sha256(b"".join(hashlib.sha256(t).digest() for t in texts)).hexdigest()[:16]
    root = Path(f"{base}-audit")
    path = root / digest
    try:
        path.mkdir(parents=True, exist_ok=True)
        if drops_privileges() and sandbox != "bwrap":
            for d in (path, *path.rglob("*")):
                os.chown(d, NOBODY, NOBODY)
        os.utime(path)
        for old in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return None
    return str(path)


# ---- starting the child -----------------------------------------------------------------------

def child_env(conf: Confinement, scratch: str) -> dict:
    env = {k: os.environ[k] for k in (*HARNESS_ENV, *conf.pass_env) if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    path = [_ROOT, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env.update(HOME=os.path.join(scratch, "home"), TMPDIR=os.path.join(scratch, "tmp"),
               PYTHONPATH=os.pathsep.join(dict.fromkeys(path)), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GRADAUDIT_JAX_CACHE=conf.jax_cache or "off")
    return env


def _bwrap(scratch: str, extra_rw: list[str], uid: int | None) -> list[str]:
    """Everything read-only, home directories hidden (but for the Python installation and packages
    that live there), a private /tmp, no network, its own PID namespace (all of it dies with bwrap)."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise RuntimeError("--sandbox bwrap: bubblewrap is not installed (apt-get install bubblewrap)")
    argv = [exe, "--die-with-parent", "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    homes = [h for h in ("/root", "/home") if os.path.isdir(h)]
    for h in homes:
        argv += ["--tmpfs", h]
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                                           _ROOT, *(p for p in sys.path if p and os.path.isdir(p)))}
    for p in sorted(needed):
        if any(p == h or p.startswith(h + "/") for h in homes):
            argv += ["--ro-bind", p, p]
    for path in [scratch, *extra_rw]:
        argv += ["--bind", path, path]
    if uid is not None:  # root outside, so the read-only binds are what keeps it from writing
        argv += ["--uid", str(uid), "--gid", str(uid)]
    return argv + ["--chdir", scratch, "--"]


def spawn(conf: Confinement) -> ChildProcess:
    """Start `python -m gradaudit._child`, confined; the caller then speaks the protocol with it."""
    token = os.urandom(16)
    scratch = tempfile.mkdtemp(prefix="gradaudit-child-")
    for sub in ("home", "tmp"):
        os.mkdir(os.path.join(scratch, sub), 0o700)
    bwrap = conf.sandbox == "bwrap"
    uid = NOBODY if drops_privileges() else None
    if uid is not None and not bwrap:  # (under bwrap the child is still root outside its namespace)
        for root, dirs, _ in os.walk(scratch):
            for d in (root, *(os.path.join(root, x) for x in dirs)):
                os.chown(d, uid, uid)
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    for fd in (req_w, rep_r):
        os.set_inheritable(fd, False)
    rw = [conf.jax_cache] if conf.jax_cache else []
    # the child drops to `uid` itself, first thing (it may keep read access: needs_read_access); under
    # bwrap the sandbox gives it its own uid in a user namespace
    drop = -1 if uid is None or bwrap else uid
    read_all = int(drop >= 0 and needs_read_access())
    argv = [*(_bwrap(scratch, rw, uid) if bwrap else []), sys.executable, "-m", "gradaudit._child",
            str(req_r), str(rep_w), "0" if bwrap else str(os.getpid()), str(drop), str(read_all)]
    become_subreaper()
    stderr = tempfile.TemporaryFile()
    cgroup = None if bwrap else _make_cgroup()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                pass_fds=(req_r, rep_w), env=child_env(conf, scratch), cwd=scratch,
                                start_new_session=True)
    except BaseException:
        for fd in (req_r, req_w, rep_r, rep_w):
            os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
        if cgroup is not None:
            _remove_cgroup(cgroup)
        raise
    os.close(req_r)
    os.close(rep_w)
    _live_children.add(proc.pid)
    child = ChildProcess(proc, req_w, rep_r, token, scratch, cgroup, None if bwrap else uid, stderr)
    if cgroup is not None:
        try:  # before the child reads its token: it has run none of the audited code yet
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        except OSError:
            _remove_cgroup(cgroup)
            child.cgroup = None
    os.write(req_w, token)
    return child


def signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    return {"SIGSEGV": "SIGSEGV (segmentation fault)", "SIGKILL": "SIGKILL (killed; out of memory?)",
            "SIGABRT": "SIGABRT (abort)", "SIGBUS": "SIGBUS (bus error)",
            "SIGXCPU": "SIGXCPU (CPU time limit)"}.get(name, name)
