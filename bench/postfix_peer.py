"""The Postfix peer figure: a private Postfix instance relaying to smtp-sink, end to end.

    python -m bench.postfix_peer --messages 20000 [--size 2048] [--sessions 20]

Builds a throw-away Postfix instance in a temporary directory (its own config, queue and
data directories; the system instance and port 25 are never touched), listening only on
127.0.0.1:<free port> and relaying every message to ``smtp-sink`` (:mod:`bench.sink`) on
another loopback port. ``smtp-source -d -s SESSIONS -l SIZE -m MESSAGES`` injects the mail
(``-d``: each of the SESSIONS parallel sessions sends all its messages over one
connection). The clock runs from the start of ``smtp-source`` until the sink has counted
MESSAGES messages, so the rate is injection + queueing (fsync'd queue files) + relay.

CPU accounting. ``postfix start`` daemonizes the master, so ``RUSAGE_CHILDREN`` cannot see
it; instead the Postfix CPU time is the sum over the master and all its live descendants
of utime + stime + cutime + cstime from /proc/<pid>/stat. A daemon that exits (``max_use``
/ ``max_idle``) is reaped by the master and its times move into the master's cutime and
cstime, so each process is counted exactly once whether it is alive or reaped; the figure
is the difference between a snapshot taken just before injection and one taken when the
sink has everything (instance start-up is excluded). A snapshot is retried if the master
reaped a child while it was being taken. Resolution is one clock tick (10 ms) per process.
smtp-sink's and smtp-source's CPU are reported separately.

Memory: the RSS of the master and its descendants, summed, sampled every 100 ms; the peak
is reported. Shared pages (libc, Postfix's shared libraries) are counted once per process
in that sum, and Postfix runs ~40 processes at this load, so it greatly overstates the
footprint; the peak of the summed PSS (smaps_rollup: shared pages divided among the
processes sharing them) is reported beside it and is the fair figure to compare.

Instance settings (main.cf) beyond Postfix's compiled-in defaults: ``relayhost =
[127.0.0.1]:<sink port>``, ``mynetworks = 127.0.0.0/8``, ``smtpd_relay_restrictions`` and
``smtpd_recipient_restrictions = permit_mynetworks, reject``, ``inet_interfaces =
127.0.0.1``, ``mydestination`` and ``relay_domains`` empty (no local delivery),
``default_destination_concurrency_limit = 20`` (the default, stated), no DNS
(``smtp_dns_support_level = disabled``, ``smtp_host_lookup = native``,
``smtpd_peername_lookup = no``), ``maillog_file`` in the instance directory via postlogd.
Performance settings are left at their defaults (``in_flow_delay = 1s``,
``smtp_connection_cache_on_demand = yes``, ``default_process_limit = 100``, queue files
fsync'd). master.cf has only the services needed (no pickup, local, tlsmgr) and no chroot
(Debian's master.cf chroots most daemons; that needs a prepared chroot and does not change
the work done per message).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.sink import (
    SmtpSink,
    find_tool,
    finish_source,
    free_port,
    proc_cpu_seconds,
    proc_rss_bytes,
    wait_greeting,
)

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"
MIB = 1024 * 1024


@dataclass
class PeerResult:
    messages: int  # messages smtp-source was asked to send
    seconds: float  # from the start of smtp-source until the sink had them all
    rate: float  # delivered messages per second, end to end
    cpu_seconds: float  # user + system CPU of all Postfix processes during the run
    cpu_s_per_million: float  # cpu_seconds scaled to one million delivered messages
    peak_rss_mb: float  # peak of the summed RSS of the Postfix processes, MiB
    source_status: int  # smtp-source's exit status (0 = every message accepted)
    peak_pss_mb: float = 0.0  # the same with PSS (shared pages split among sharers), MiB
    delivered: int = 0  # messages the sink counted
    inject_seconds: float = 0.0  # until smtp-source exited (all messages queued)
    sink_cpu_seconds: float = 0.0
    source_cpu_seconds: float = 0.0
    complete: bool = False  # the sink counted all ``messages`` before the timeout
    instance_dir: str = ""  # the temporary instance directory (removed when done)
    source_stderr: str = ""


# -- /proc helpers ------------------------------------------------------------------------


def _ppid_map() -> dict[int, int]:
    """pid -> ppid of every process."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2 :].split()
        out[int(name)] = int(rest[1])
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (``root`` first), or [] if it is gone."""
    parents = _ppid_map()
    if root not in parents:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used by ``root`` and every descendant, live or reaped (see module doc)."""
    total = 0.0
    for _ in range(10):
        before = proc_cpu_seconds(root, children=True)
        total = sum(proc_cpu_seconds(pid, children=True) for pid in process_tree(root))
        if proc_cpu_seconds(root, children=True) == before:
            break  # no child reaped meanwhile: nobody counted twice or missed
    return total


def proc_pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (/proc/<pid>/smaps_rollup); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


def queue_length(queue_dir: Path) -> int:
    """Queue files in the maildrop, incoming, active, deferred and hold queues."""
    n = 0
    for q in QUEUES:
        for _, _, files in os.walk(queue_dir / q):
            n += len(files)
    return n


# -- instance -----------------------------------------------------------------------------


def main_cf(root: Path, smtpd_port: int, sink_port: int, concurrency: int) -> str:
    return f"""\
# Private benchmark instance written by bench/postfix_peer.py; see that module.
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
myhostname = postfix-peer.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
biff = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
relayhost = [127.0.0.1]:{sink_port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
default_destination_concurrency_limit = {concurrency}
syslog_name = postfix-peer
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
# smtpd listens on 127.0.0.1:{smtpd_port} (master.cf)
"""


def master_cf(smtpd_port: int) -> str:
    # service type private unpriv chroot wakeup maxproc command
    return f"""\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def check_searchable(directory: Path, user: str = "postfix") -> None:
    """Raise ValueError unless ``user`` (Postfix's mail_owner) can search every directory on
    the way to ``directory``: the master opens its lock file, and postlogd the maillog,
    after dropping root (a pytest ``tmp_path`` under a 0700 /tmp/pytest-of-root fails)."""
    pw = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, pw.pw_gid))
    path = directory.resolve()
    for d in (path, *path.parents):
        st = d.stat()
        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise ValueError(
                f"{d} is not searchable by the {user} user; put the Postfix instance "
                f"elsewhere (workdir=None uses {tempfile.gettempdir()})"
            )


def _run(argv: list[str], what: str, root: Path | None = None) -> str:
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        log = ""
        if root is not None and (root / "maillog").exists():
            log = "\nmaillog:\n" + (root / "maillog").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed ({proc.returncode}): {out}{log}")
    return out


class PostfixInstance:
    """A private Postfix instance under ``root`` (a context manager: stops and kills)."""

    def __init__(self, root: Path, sink_port: int, concurrency: int = 20) -> None:
        self.root = root
        self.conf = root / "etc"
        self.queue = root / "spool"
        self.sink_port = sink_port
        self.concurrency = concurrency
        self.port = 0
        self.master_pid = 0
        self.postfix = find_tool("postfix")
        self._seen: dict[int, int] = {}  # pid -> start time, for the leftover sweep
        self._seen_lock = threading.Lock()

    def start(self, attempts: int = 5) -> None:
        check_searchable(self.root.parent)
        # The master opens data_directory/master.lock and postlogd the maillog as the
        # postfix user: the instance root must be searchable by it (mkdtemp made it 0700).
        self.root.chmod(0o755)
        self.conf.mkdir(exist_ok=True)
        self.queue.mkdir(exist_ok=True)
        last: Exception | None = None
        for _ in range(attempts):
            self.port = free_port()
            (self.conf / "main.cf").write_text(
                main_cf(self.root, self.port, self.sink_port, self.concurrency)
            )
            (self.conf / "master.cf").write_text(master_cf(self.port))
            _run([self.postfix, "-c", str(self.conf), "check"], "postfix check", self.root)
            logged = len(self.maillog())
            try:
                _run([self.postfix, "-c", str(self.conf), "start"], "postfix start", self.root)
            except RuntimeError as exc:
                self.stop()
                if "Address already in use" not in self.maillog()[logged:]:
                    raise
                last = exc  # lost the free port to someone else: try another
                continue
            pid_file = self.queue / "pid" / "master.pid"
            self.master_pid = int(pid_file.read_text().split()[0])
            self.note_processes()
            if self._probe():
                return
            last = RuntimeError(f"smtpd on 127.0.0.1:{self.port} does not answer")
            self.stop()
        raise RuntimeError(f"Postfix instance did not start: {last}")

    def _probe(self, timeout: float = 10.0) -> bool:
        return wait_greeting(self.port, timeout)

    def processes(self) -> list[int]:
        return process_tree(self.master_pid) if self.master_pid else []

    def note_processes(self) -> list[int]:
        """The live process tree, remembered for the final sweep."""
        pids = self.processes()
        with self._seen_lock:
            for pid in pids:
                if pid not in self._seen and (st := _start_time(pid)) is not None:
                    self._seen[pid] = st
        return pids

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.master_pid) if self.master_pid else 0.0

    def queue_length(self) -> int:
        return queue_length(self.queue)

    def stop(self) -> None:
        """``postfix stop``, then SIGKILL whatever of the instance is still alive."""
        if (self.queue / "pid" / "master.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run([self.postfix, "-c", str(self.conf), "stop"], "postfix stop")
        deadline = time.monotonic() + 5
        while self._leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self._leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.master_pid = 0

    def _leftovers(self) -> list[int]:
        with self._seen_lock:
            seen = dict(self._seen)
        alive = [pid for pid, st in seen.items() if _start_time(pid) == st]
        # Anything else of this instance: the postfix command exports MAIL_CONFIG to the
        # master, which passes it on to every daemon.
        entry = b"MAIL_CONFIG=" + str(self.conf).encode()
        me = os.getpid()
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in seen and int(name) != me:
                pid = int(name)
                if _environ_has(pid, entry):
                    alive.append(pid)
        return alive

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def private_instance(
    sink_port: int, workdir: Path | None = None, concurrency: int = 20
) -> Iterator[PostfixInstance]:
    root = Path(tempfile.mkdtemp(prefix="postfix-peer-", dir=workdir))
    inst = PostfixInstance(root, sink_port, concurrency)
    try:
        inst.start()
        yield inst
    finally:
        try:
            inst.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


class _Sampler(threading.Thread):
    """Every ``interval`` s: the summed RSS of the instance (peak kept), and its pids."""

    def __init__(self, inst: PostfixInstance, interval: float = 0.1) -> None:
        super().__init__(name="postfix-peer-sampler", daemon=True)
        self.inst = inst
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval):
                return

    def sample(self) -> None:
        pids = self.inst.note_processes()
        self.peak_rss = max(self.peak_rss, sum(map(proc_rss_bytes, pids)))
        self.peak_pss = max(self.peak_pss, sum(map(proc_pss_bytes, pids)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


# -- the run ------------------------------------------------------------------------------


def run_postfix(
    messages: int,
    size: int = 2048,
    sessions: int = 20,
    workdir: Path | None = None,
    *,
    concurrency: int = 20,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> PeerResult:
    """Relay ``messages`` messages of ``size`` bytes, injected over ``sessions`` parallel
    SMTP sessions, through a private Postfix instance (temporary directory under
    ``workdir``) to smtp-sink; measure the end-to-end rate, CPU and memory."""
    say = progress or (lambda _line: None)
    limit = timeout if timeout is not None else 60.0 + messages / 50.0
    source_bin = find_tool("smtp-source")
    check_searchable(workdir or Path(tempfile.gettempdir()))
    with SmtpSink() as sink, private_instance(sink.port, workdir, concurrency) as inst:
        say(
            f"postfix instance {inst.root} pid {inst.master_pid} on 127.0.0.1:{inst.port}, "
            f"smtp-sink on 127.0.0.1:{sink.port}"
        )
        base_sink = sink.messages
        sampler = _Sampler(inst)
        sampler.start()
        cpu0 = inst.cpu_seconds()
        sink_cpu0 = sink.cpu_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        argv = [
            source_bin, "-d", "-s", str(sessions), "-l", str(size), "-m", str(messages),
            "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{inst.port}",
        ]  # fmt: skip
        say(" ".join(argv))
        err_path = inst.root / "smtp-source.err"
        with err_path.open("wb") as err:
            t0 = time.monotonic()
            source = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
            try:
                inject_seconds, end = _wait_done(
                    inst, sink, source, base_sink + messages, t0, limit, say
                )
            finally:
                finish_source(source)
        cpu = inst.cpu_seconds() - cpu0
        sink_cpu = sink.cpu_seconds() - sink_cpu0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler.stop()
        delivered = sink.messages - base_sink
        seconds = end - t0
        stderr_text = err_path.read_text(errors="replace")[-2000:]
        if delivered < messages:
            say(f"INCOMPLETE: sink has {delivered}/{messages}; maillog tail:")
            say(inst.maillog()[-2000:])
    return PeerResult(
        messages=messages,
        seconds=seconds,
        rate=delivered / seconds if seconds > 0 else 0.0,
        cpu_seconds=cpu,
        cpu_s_per_million=cpu / delivered * 1e6 if delivered else 0.0,
        peak_rss_mb=sampler.peak_rss / MIB,
        peak_pss_mb=sampler.peak_pss / MIB,
        source_status=source.returncode,
        delivered=delivered,
        inject_seconds=inject_seconds,
        sink_cpu_seconds=sink_cpu,
        source_cpu_seconds=(ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        complete=delivered >= messages,
        source_stderr=stderr_text,
        instance_dir=str(inst.root),
    )


def _wait_done(
    inst: PostfixInstance,
    sink: SmtpSink,
    source: subprocess.Popen[bytes],
    target: int,
    t0: float,
    limit: float,
    say: Callable[[str], None],
) -> tuple[float, float]:
    """Poll until the sink has ``target`` messages (or smtp-source has exited and the queue
    is empty, or ``limit`` seconds); returns (injection seconds, end time)."""
    inject_seconds = 0.0
    next_report = t0 + 1.0
    idle_since: float | None = None
    while True:
        if sink.wait_for(target, 0.01):
            now = time.monotonic()
            if not inject_seconds and source.poll() is not None:
                inject_seconds = now - t0
            return inject_seconds or now - t0, now
        now = time.monotonic()
        if not inject_seconds and source.poll() is not None:
            inject_seconds = now - t0
            say(f"  {inject_seconds:7.2f}s smtp-source exited with status {source.returncode}")
        if inject_seconds and inst.queue_length() == 0:
            # Everything accepted has left the queue; whatever is missing never came in.
            idle_since = idle_since or now
            if now - idle_since > 2.0:
                return inject_seconds, now
        else:
            idle_since = None
        if now - t0 > limit:
            say(f"  timeout after {limit:.0f}s")
            return inject_seconds, now
        if now >= next_report:
            next_report += 1.0
            say(f"  {now - t0:7.2f}s delivered {sink.messages:>8}  queue {inst.queue_length():>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=2048, help="message payload bytes")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="default_destination_concurrency_limit")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the instance dir")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    res = run_postfix(
        args.messages, args.size, args.sessions, args.workdir,
        concurrency=args.concurrency, timeout=args.timeout,
        progress=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(
        f"postfix: {res.delivered}/{res.messages} messages of {args.size} B in "
        f"{res.seconds:.2f} s = {res.rate:,.0f} msg/s end to end "
        f"(injection {res.inject_seconds:.2f} s)\n"
        f"  postfix CPU {res.cpu_seconds:.2f} s = {res.cpu_s_per_million:,.0f} CPU-s per "
        f"million messages\n"
        f"  peak memory: RSS sum {res.peak_rss_mb:.1f} MiB, PSS sum {res.peak_pss_mb:.1f} MiB\n"
        f"  smtp-sink CPU {res.sink_cpu_seconds:.2f} s, smtp-source CPU "
        f"{res.source_cpu_seconds:.2f} s, smtp-source status {res.source_status}"
    )
    if res.source_stderr.strip():
        print("smtp-source stderr:", res.source_stderr.strip(), sep="\n")
    fields = {k: v for k, v in asdict(res).items() if k != "source_stderr"}
    print(fields)
    return 0 if res.complete and res.source_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
