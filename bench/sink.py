"""Postfix's ``smtp-sink`` as a fast, counting SMTP destination for benchmarks.

``smtp-sink -c`` writes running counters to stdout, one record per event, separated by
``\\r`` (``sess=5 quit=5 mesg=50``): a record is written whenever a session ends, a QUIT
is executed or a message's final ``.`` is received, and the stream is flushed each time.
A reader thread drains the pipe and keeps the last record, so :attr:`SmtpSink.messages`
is the number of messages the sink has accepted, at no cost beyond a short write per
message (the ``-d``/``-D`` dump options would write every message to disk instead).

    with SmtpSink() as sink:
        ...  # deliver to 127.0.0.1:sink.port
        sink.wait_for(1000, timeout=60)
        print(sink.messages, sink.cpu_seconds())
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import closing, suppress
from dataclasses import dataclass
from types import TracebackType

CLK_TCK = os.sysconf("SC_CLK_TCK")


def find_tool(name: str) -> str:
    """Path of a Postfix tool (``smtp-sink``, ``smtp-source``, ``postfix``...): PATH, then
    /usr/sbin, which a non-root PATH often lacks."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/lib/postfix/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's postfix package (bash scripts/setup --peers)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound, then closed): callers retry on a race."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat (plus cutime + cstime, the times of
    the children it has reaped, when ``children``); 0.0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    # Fields after the parenthesised command name (which may contain spaces); field 3
    # (state) is rest[0], so utime (14), stime (15), cutime (16), cstime (17) are rest[11:15].
    rest = data[data.rindex(b")") + 2 :].split()
    ticks = int(rest[11]) + int(rest[12])
    if children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / CLK_TCK


def finish_source(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """The exit status of an injector (smtp-source), killed only when it has not exited
    within ``grace`` seconds. The sink can count every message before smtp-source has read
    its last replies and sent QUIT: killing it at once then reads as a failed injection
    (status -9; seen in CI)."""
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/<pid>/statm; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class SinkCounters:
    sessions: int = 0  # sessions ended
    quits: int = 0  # QUIT commands executed
    messages: int = 0  # messages accepted (final "." received)


def parse_counters(record: bytes) -> SinkCounters | None:
    """One ``-c`` record (``sess=5 quit=5 mesg=50``), or None if it is not one."""
    fields: dict[str, int] = {}
    for item in record.split():
        key, sep, value = item.partition(b"=")
        if not sep or not value.isdigit():
            return None
        fields[key.decode()] = int(value)
    if "mesg" not in fields:
        return None
    return SinkCounters(fields.get("sess", 0), fields.get("quit", 0), fields["mesg"])


class SmtpSink:
    """``smtp-sink`` on ``host``:<a free port>, counting messages; a context manager.

    ``port`` is the listening port, ``pid`` the sink's process (the same process after it
    drops root privileges with ``-u``), :attr:`messages` the count so far.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        backlog: int = 1024,
        max_concurrency: int = 256,
        user: str = "nobody",
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.backlog = backlog
        self.max_concurrency = max_concurrency
        self.user = user
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._counters = SinkCounters()
        self._changed = threading.Condition()
        self.stderr = b""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, attempts: int = 5) -> SmtpSink:
        binary = find_tool("smtp-sink")
        last = ""
        for _ in range(attempts):
            port = free_port(self.host)
            argv = [binary, "-c", "-m", str(self.max_concurrency)]
            if os.geteuid() == 0:
                argv += ["-u", self.user]  # required as root; dropped after binding
            argv += [*self.extra_args, f"{self.host}:{port}", str(self.backlog)]
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            if self._wait_listening(proc, port):
                self.port = port
                self._proc = proc
                self._counters = SinkCounters()
                self._reader = threading.Thread(
                    target=self._read_counters, name=f"smtp-sink-{port}", daemon=True
                )
                self._reader.start()
                return self
            # Lost the race for the port (or another failure): collect stderr and retry.
            with suppress(ProcessLookupError):
                proc.kill()
            _, err = proc.communicate()
            last = err.decode(errors="replace").strip()
        raise RuntimeError(f"smtp-sink did not start: {last}")

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
                s.settimeout(1.0)
                try:
                    s.connect((self.host, port))
                    # The probe is a session of its own: read the greeting, say QUIT.
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        with suppress(OSError):
                            s.recv(512)
                        return True
                except OSError:
                    pass
            time.sleep(0.02)
        return False

    def _read_counters(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *records, pending = pending.split(b"\r")
            latest = next(
                (c for c in map(parse_counters, reversed(records)) if c is not None), None
            )
            if latest is not None:
                with self._changed:
                    self._counters = latest
                    self._changed.notify_all()

    def stop(self) -> None:
        """Terminate the sink (idempotent); the counters keep their last values."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with suppress(ProcessLookupError):
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        self.stderr = err or b""
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def __enter__(self) -> SmtpSink:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("smtp-sink is not running")
        return self._proc.pid

    @property
    def counters(self) -> SinkCounters:
        return self._counters

    @property
    def messages(self) -> int:
        """Messages accepted so far (each message's final "." counts once)."""
        return self._counters.messages

    def wait_for(self, messages: int, timeout: float) -> bool:
        """Block until the sink has accepted ``messages`` messages; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._counters.messages < messages:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the sink process has used so far."""
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)


def wait_greeting(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """True once a 220 greeting comes from 127.0.0.1:``port`` (the probe then says QUIT);
    False after ``timeout`` seconds or as soon as ``proc`` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        with contextlib.closing(socket.socket()) as s, contextlib.suppress(OSError):
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
                return True
        time.sleep(0.05)
    return False
