"""Start nats-server with JetStream on free loopback ports, for tests and benchmarks.

One node or a 3-node cluster with routes, each server in a temporary directory of its
own (config, store, log). ``with nats_cluster(3) as c:`` starts them, waits until
JetStream answers a request on every server (``$JS.API.INFO``; in a cluster that needs a
meta leader), and stops them at exit (SIGTERM, then SIGKILL). ``c.kill(i)`` kills one
server with SIGKILL (failure tests), ``c.start(i)`` restarts it on the same ports and store.

The binary is ``$NATS_SERVER`` or ``nats-server`` on the PATH (Debian: /usr/sbin).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from postline.testing.tcp_proxy import Proxy

READY_TIMEOUT = 20.0


def server_binary() -> str | None:
    found = os.environ.get("NATS_SERVER") or shutil.which("nats-server")
    if found is None and os.path.exists("/usr/sbin/nats-server"):
        found = "/usr/sbin/nats-server"
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NatsServer:
    name: str
    port: int
    cluster_port: int
    directory: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "nats.conf")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    servers: list[NatsServer]
    binary: str
    cluster_name: str = "PL"
    _routes: list[str] = field(default_factory=list)
    # extra config lines per server (a JetStream domain, leafnodes, a gateway): two_datacenters
    extra: list[list[str]] = field(default_factory=list)
    domain: str | None = None  # the JetStream domain (leafnode join); None: no domain

    @property
    def urls(self) -> list[str]:
        """Every server's client URL, as nats-py wants them (a list)."""
        return [s.url for s in self.servers]

    def write_configs(self) -> None:
        self._routes = [f"nats-route://127.0.0.1:{s.cluster_port}" for s in self.servers]
        for s in self.servers:
            store = os.path.join(s.directory, "js")
            domain = f", domain: {self.domain}" if self.domain else ""
            lines = [
                f"server_name: {s.name}",
                f"listen: 127.0.0.1:{s.port}",
                f'jetstream {{ store_dir: "{store}", max_memory_store: 256MB,'
                f" max_file_store: 4GB{domain} }}",
            ]
            if len(self.servers) > 1:
                routes = ", ".join(self._routes)
                lines.append(
                    f"cluster {{ name: {self.cluster_name}, "
                    f"listen: 127.0.0.1:{s.cluster_port}, routes: [{routes}] }}"
                )
            if self.extra:
                lines += self.extra[self.servers.index(s)]
            with open(s.config_path, "w") as f:
                f.write("\n".join(lines) + "\n")

    def start(self, i: int) -> None:
        s = self.servers[i]
        if s.alive:
            return
        log = open(os.path.join(s.directory, "server.log"), "ab")  # noqa: SIM115
        try:
            s.proc = subprocess.Popen(
                [self.binary, "-c", s.config_path], stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (no clean shutdown, like a crashed machine)."""
        s = self.servers[i]
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait()

    def freeze(self, i: int, frozen: bool = True) -> None:
        """SIGSTOP server ``i`` (alive but silent, like a machine stuck in swap); SIGCONT
        with ``frozen=False``."""
        s = self.servers[i]
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self, i: int, timeout: float = 5.0) -> None:
        s = self.servers[i]
        if s.proc is None or s.proc.poll() is not None:
            return
        s.proc.terminate()
        try:
            s.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()

    def log(self, i: int) -> str:
        path = os.path.join(self.servers[i].directory, "server.log")
        with open(path, errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = READY_TIMEOUT, only: list[int] | None = None) -> None:
        """Until JetStream answers on every (or each listed) live server."""
        deadline = time.monotonic() + timeout
        for i in only if only is not None else range(len(self.servers)):
            s = self.servers[i]
            while not _jetstream_answers(s.port):
                if not s.alive:
                    raise RuntimeError(f"nats-server {s.name} exited:\n{self.log(i)[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream on {s.name} not ready:\n{self.log(i)[-2000:]}")
                time.sleep(0.05)


def _jetstream_answers(port: int) -> bool:
    """One ``$JS.API.INFO`` request over a raw socket: a JSON reply without an error
    means JetStream is enabled and (in a cluster) has a meta leader."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            f = sock.makefile("rb")
            f.readline()  # INFO
            sock.sendall(
                b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
                b"SUB _R.x 1\r\nPUB $JS.API.INFO _R.x 0\r\n\r\nPING\r\n"
            )
            while True:
                line = f.readline()
                if not line:
                    return False
                if line.startswith(b"MSG"):
                    size = int(line.split()[-1])
                    body = f.read(size + 2)
                    return b'"error"' not in body
                if line.startswith(b"-ERR"):
                    return False
    except OSError:
        return False


@contextmanager
def nats_cluster(size: int = 1, binary: str | None = None) -> Iterator[NatsCluster]:
    """``size`` servers (1, or 3 for a cluster with routes) in a temporary directory."""
    exe = binary or server_binary()
    if exe is None:
        raise RuntimeError("nats-server not found (apt-get install nats-server)")
    with tempfile.TemporaryDirectory(prefix="postline-nats-") as tmp:
        ports = free_ports(2 * size)
        servers = []
        for i in range(size):
            directory = os.path.join(tmp, f"n{i + 1}")
            os.makedirs(directory)
            servers.append(NatsServer(f"n{i + 1}", ports[2 * i], ports[2 * i + 1], directory))
        cluster = NatsCluster(servers, exe)
        cluster.write_configs()
        try:
            for i in range(size):
                cluster.start(i)
            cluster.wait_ready()
            yield cluster
        finally:
            for i in range(size):
                cluster.stop(i)


@dataclass
class Datacenters:
    """Two 3-server JetStream clusters (``dcs[0]`` is ``dc1``, ``dcs[1]`` is ``dc2``) joined
    by ``join``: ``"leaf"`` (each cluster its own JetStream domain named after it; every
    dc2 server solicits a leafnode connection to dc1's servers) or ``"gateway"`` (one
    super-cluster: every server has a gateway to both clusters, one JetStream meta group
    over all six servers)."""

    dcs: list[NatsCluster]
    join: str
    proxies: list[Proxy] = field(default_factory=list)  # the WAN (``wan=``): dc2 -> dc1

    def split(self) -> None:
        """Cut the link between the datacenters (needs ``wan=``); :meth:`heal` ends it."""
        assert self.proxies, "two_datacenters(wan=...) makes the link a proxy to cut"
        for p in self.proxies:
            p.cut()

    def heal(self) -> None:
        for p in self.proxies:
            p.heal()

    def kill(self, dc: int) -> None:
        """SIGKILL every server of one datacenter (a datacenter lost whole)."""
        for i in range(len(self.dcs[dc].servers)):
            self.dcs[dc].kill(i)

    def freeze(self, dc: int, frozen: bool = True) -> None:
        """SIGSTOP (``frozen``) or SIGCONT every live server of one datacenter: it answers
        nothing meanwhile, like a datacenter behind a stalled link."""
        for s in self.dcs[dc].servers:
            if s.alive:
                assert s.proc is not None
                s.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)


def join_config(
    join: str,
    dc: int,
    names: list[str],
    ports: list[list[int]],
    s: int,
    listen: list[int] | None = None,
) -> list[str]:
    """The lines server ``s`` of datacenter ``dc`` needs to join the other datacenter.
    ``ports[d][i]`` is server i of datacenter d's leafnode (leaf) or gateway port as the
    others dial it; ``listen`` the leafnode ports dc1 listens on if they differ (a proxy
    between: dc1 advertises ``ports[0]``, or the leaf nodes would learn the direct ones)."""
    listen = listen or ports[0]
    if join == "leaf":
        if dc == 0:  # ports[0] are the proxies' (advertised) when they differ from listen
            return [
                f"leafnodes {{ listen: 127.0.0.1:{listen[s]}, advertise: 127.0.0.1:{ports[0][s]} }}"
            ]
        urls = ", ".join(f"nats-leaf://127.0.0.1:{p}" for p in ports[0])
        return [f"leafnodes {{ remotes: [ {{ urls: [{urls}] }} ] }}"]
    gateways = ", ".join(
        f"{{ name: {name}, urls: [{', '.join(f'nats://127.0.0.1:{p}' for p in ports[d])}] }}"
        for d, name in enumerate(names)
    )
    return [
        f"gateway {{ name: {names[dc]}, listen: 127.0.0.1:{ports[dc][s]}, gateways: [{gateways}] }}"
    ]


@contextmanager
def two_datacenters(
    join: str = "leaf",
    names: tuple[str, str] = ("dc1", "dc2"),
    binary: str | None = None,
    wan: float | None = None,
) -> Iterator[Datacenters]:
    """Two 3-server clusters named ``names`` (cluster name = datacenter = JetStream domain
    for ``join="leaf"``) joined by leafnodes or gateways; the working configuration of the
    multi-datacenter mode (cluster/multidc.py). Stopped at exit. With ``wan`` (seconds,
    leaf only) the leafnode connections go through proxies (tcp_proxy.py) that delay each
    direction by ``wan`` and can be cut (:meth:`Datacenters.split`)."""
    if join not in ("leaf", "gateway"):
        raise ValueError(f"join is 'leaf' or 'gateway', not {join!r}")
    if wan is not None and join != "leaf":
        raise ValueError("wan= needs join='leaf'")
    exe = binary or server_binary()
    if exe is None:
        raise RuntimeError("nats-server not found (apt-get install nats-server)")
    with tempfile.TemporaryDirectory(prefix="postline-nats-dc-") as tmp:
        ports = free_ports(18)
        join_ports = [ports[12:15], ports[15:18]]
        proxies = [] if wan is None else [Proxy(p, wan) for p in join_ports[0]]
        dials = [[p.port for p in proxies] or join_ports[0], join_ports[1]]  # dc2 dials
        dcs: list[NatsCluster] = []
        for d, name in enumerate(names):
            servers = []
            for i in range(3):
                directory = os.path.join(tmp, f"{name}-n{i + 1}")
                os.makedirs(directory)
                base = d * 6 + 2 * i
                servers.append(
                    NatsServer(f"{name}-n{i + 1}", ports[base], ports[base + 1], directory)
                )
            extra = [join_config(join, d, list(names), dials, i, join_ports[0]) for i in range(3)]
            dc = NatsCluster(servers, exe, cluster_name=name, extra=extra)
            dc.domain = name if join == "leaf" else None
            dc.write_configs()
            dcs.append(dc)
        try:
            for dc in dcs:
                for i in range(3):
                    dc.start(i)
            for dc in dcs:
                dc.wait_ready()
            yield Datacenters(dcs, join, proxies)
        finally:
            _stop_all([s for dc in dcs for s in dc.servers])
            for p in proxies:
                p.close()


def _stop_all(servers: list[NatsServer], timeout: float = 5.0) -> None:
    """SIGTERM every live server at once, then wait (SIGKILL after ``timeout``): six
    JetStream servers one after the other took seconds of a test's time."""
    live = [s.proc for s in servers if s.proc is not None and s.proc.poll() is None]
    for proc in live:
        proc.terminate()
    for proc in live:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
