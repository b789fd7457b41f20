"""A real authoritative DNS server on loopback for tests: UDP and TCP on one port.

Zone data changes at runtime from the test (thread-safe); each name can instead be made to
answer NXDOMAIN, SERVFAIL, or nothing at all (a timeout). Every query is counted, so tests
can tell a cached lookup from one that reached the server. Answers are built with
``dns.message.make_response``; a name that exists with other types answers NODATA, a name
that does not exist answers NXDOMAIN, both with a SOA whose MINIMUM is ``negative_ttl``.

The server runs in its own thread, so synchronous clients (dkimpy's ``dnsfunc``) and an
asyncio loop in the test's thread can both query it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_MODES = ("nxdomain", "servfail", "timeout")


class FakeDnsServer:
    """``with FakeDnsServer() as dns: dns.add_mx("example.com", [(10, "mx.example.com")])``."""

    def __init__(self, host: str = "127.0.0.1", *, negative_ttl: int = 5) -> None:
        self.host = host
        self.negative_ttl = negative_ttl
        self._records: dict[str, dict[str, tuple[int, list[str]]]] = {}
        self._modes: dict[str, str] = {}
        self._log: list[tuple[str, str]] = []
        self.tcp_queries = 0  # how many of the queries came over TCP
        self._lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._udp, self._tcp = _bind_pair(self.host)
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def __enter__(self) -> FakeDnsServer:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._udp is not None, "start() the server first"
        return int(self._udp.getsockname()[1])

    @property
    def address(self) -> str:
        """``"ip:port"``, as ``dns.nameservers`` in the config takes it."""
        return f"{self.host}:{self.port}"

    # -- zone data -------------------------------------------------------------------------

    def add_mx(self, domain: str, records: list[tuple[int, str]], ttl: int = 300) -> None:
        self._add(domain, "MX", [f"{pref} {_absolute(host)}" for pref, host in records], ttl)

    def add_a(self, host: str, ip: str, ttl: int = 300) -> None:
        self._add(host, "A", [ip], ttl, append=True)

    def add_aaaa(self, host: str, ip: str, ttl: int = 300) -> None:
        self._add(host, "AAAA", [ip], ttl, append=True)

    def add_txt(self, name: str, text: str, ttl: int = 300) -> None:
        # A character-string holds at most 255 octets (RFC 1035 §3.3); long DKIM keys are
        # split into several, which the reader concatenates (RFC 6376 §3.6.2.2).
        data = text.encode()
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        self._add(name, "TXT", [" ".join(_quoted(c) for c in chunks)], ttl, append=True)

    def set_nxdomain(self, name: str) -> None:
        self._set_mode(name, "nxdomain")

    def set_servfail(self, name: str) -> None:
        self._set_mode(name, "servfail")

    def set_timeout(self, name: str) -> None:
        """Never answer queries for ``name``."""
        self._set_mode(name, "timeout")

    def remove(self, name: str) -> None:
        """Forget every record and mode of ``name`` (it becomes NXDOMAIN)."""
        key = _key(name)
        with self._lock:
            self._records.pop(key, None)
            self._modes.pop(key, None)

    # -- query counter ---------------------------------------------------------------------

    @property
    def queries(self) -> int:
        with self._lock:
            return len(self._log)

    def query_count(self, name: str | None = None, rdtype: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for n, t in self._log
                if (name is None or n == _key(name)) and (rdtype is None or t == rdtype.upper())
            )

    # -- internals -------------------------------------------------------------------------

    def _add(
        self, name: str, rdtype: str, rdatas: list[str], ttl: int, append: bool = False
    ) -> None:
        key = _key(name)
        with self._lock:
            types = self._records.setdefault(key, {})
            old = types.get(rdtype, (ttl, []))[1] if append else []
            types[rdtype] = (ttl, old + [r for r in rdatas if r not in old])
            self._modes.pop(key, None)

    def _set_mode(self, name: str, mode: str) -> None:
        assert mode in _MODES
        with self._lock:
            self._modes[_key(name)] = mode

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ)
            sel.register(self._tcp, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=0.05):
                    if key.fileobj is self._udp:
                        self._serve_udp()
                    else:
                        conn, _ = self._tcp.accept()
                        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        wire, peer = self._udp.recvfrom(65535)
        reply = self._respond(wire, udp=True)
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _serve_tcp(self, conn: socket.socket) -> None:
        # RFC 1035 §4.2.2: each message is preceded by its length in two octets.
        conn.settimeout(5)
        with conn:
            try:
                while (head := _recv_exact(conn, 2)) is not None:
                    wire = _recv_exact(conn, struct.unpack("!H", head)[0])
                    reply = self._respond(wire, udp=False) if wire is not None else None
                    if reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    def _respond(self, wire: bytes, *, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        question = query.question[0]
        name, rdtype = _key(question.name.to_text()), dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._log.append((name, rdtype))
            self.tcp_queries += not udp
            mode = self._modes.get(name)
            found = self._records.get(name)
            records = found.get(rdtype) if found is not None else None
        if mode == "timeout":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif records is not None:
            response.answer.append(
                dns.rrset.from_text_list(question.name, records[0], "IN", rdtype, records[1])
            )
        else:
            if mode == "nxdomain" or (found is None and not self._has_below(name)):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(name))
        return _to_wire(query, response, udp)

    def _has_below(self, name: str) -> bool:
        # An empty non-terminal (a name with descendants but no records) exists: NODATA.
        with self._lock:
            return any(n.endswith("." + name) for n in self._records)

    def _soa(self, name: str) -> dns.rrset.RRset:
        apex = ".".join(name.split(".")[-2:]) or "."
        ttl = self.negative_ttl
        text = f"ns.{_absolute(apex)} hostmaster.{_absolute(apex)} 1 3600 600 86400 {ttl}"
        return dns.rrset.from_text(_absolute(apex), ttl, "IN", "SOA", text)


def _to_wire(query: dns.message.Message, response: dns.message.Message, udp: bool) -> bytes:
    limit = (query.payload if query.edns >= 0 else 512) if udp else 65535
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # RFC 2181 §9: too big for UDP; set TC so that the client asks again over TCP.
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire()


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise OSError("no free port for both UDP and TCP")


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _key(name: str) -> str:
    return name.lower().rstrip(".") or "."


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _quoted(chunk: bytes) -> str:
    # RFC 1035 §5.1: \DDD for anything but printable ASCII; \" and \\ for the two specials.
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in chunk)
    return f'"{text}"'
