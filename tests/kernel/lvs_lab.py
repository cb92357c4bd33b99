"""A small LVS lab inside the UML guest: namespaces, in-process servers and clients.

Process start-up in the guest is slow (python ~0.6 s, ``import pyroute2`` ~4 s), so nothing
here starts a process except ``ip -batch`` (one a namespace) and the anycastd
daemons the tests run. Sockets are made inside a namespace by a thread that has entered it
(``setns(CLONE_NEWNET)`` applies to the calling thread only, and a socket stays in the
namespace it was created in), so the servers and the clients all live in the pytest process.

Topology (every address exists only inside these namespaces)::

    client 10.70.1.2 --- 10.70.1.1 router 10.70.2.254 --- LAN bridge (in router)
                                                         |-- director 10.70.2.1
                                                         |-- rs1      10.70.2.11
                                                         `-- rs2      10.70.2.12

The router routes the VIPs (192.0.2.0/24 here) to the director, as a BGP peer would. The
real servers' default route goes through the director (NAT replies must pass it); replies
sourced from a VIP (DR, TUN) take a routing table of their own to the router.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class NsThread:
    """A thread living in network namespace ``name``: ``call(fn)`` runs ``fn`` there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = (
            queue.Queue())
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name=f"ns-{name}")
        self._thread.start()
        err = ready.get(timeout=30)
        if err is not None:
            raise err

    def _main(self, ready: queue.Queue[BaseException | None]) -> None:
        try:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {self.name}")
            finally:
                os.close(fd)
        except BaseException as exc:  # reported to the constructor
            ready.put(exc)
            return
        ready.put(None)
        while (job := self._jobs.get()) is not None:
            fn, reply = job
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # handed back to the caller
                reply.put((False, exc))

    def call(self, fn: Callable[[], _T]) -> _T:
        reply: queue.Queue[Any] = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = reply.get(timeout=60)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return self.call(lambda: socket.socket(socket.AF_INET, kind))

    def sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")

        def write() -> None:
            with open(path, "w", encoding="ascii") as f:
                f.write(value + "\n")

        self.call(write)

    def read(self, path: str) -> str:
        """A file read from inside the namespace (``/proc/thread-self/net/...``)."""

        def read() -> str:
            with open(path, encoding="ascii") as f:
                return f.read()

        return self.call(read)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)


class LineServer:
    """Answers every line it receives with its ``name`` (one thread, many sockets).

    ``listen(ns, address, port)`` adds a listener; ``close_listener`` closes one (the
    connections it accepted stay open: that is what draining is about).
    """

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = False
        self._r, self._w = os.pipe()
        self._sel.register(self._r, selectors.EVENT_READ, None)
        self.listeners: dict[tuple[str, str, int], socket.socket] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="line-server")
        self._thread.start()

    def listen(self, ns: NsThread, name: str, address: str, port: int) -> None:
        sock = ns.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(256)
        sock.setblocking(False)
        with self._lock:
            self.listeners[(ns.name, address, port)] = sock
            self._sel.register(sock, selectors.EVENT_READ, ("listen", name.encode()))
        os.write(self._w, b"x")

    def close_listener(self, ns: NsThread, address: str, port: int) -> None:
        with self._lock:
            sock = self.listeners.pop((ns.name, address, port))
            self._sel.unregister(sock)
            sock.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    os.read(self._r, 64)
                    continue
                kind, name = key.data
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with self._lock:
                    if kind == "listen":
                        with contextlib.suppress(OSError):
                            conn, _ = sock.accept()
                            conn.setblocking(False)
                            self._sel.register(conn, selectors.EVENT_READ, ("conn", name))
                        continue
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self._sel.unregister(sock)
                        sock.close()
                        continue
                    with contextlib.suppress(OSError):
                        sock.sendall(name + b"\n" * data.count(b"\n"))

    def close(self) -> None:
        self._stop = True
        os.write(self._w, b"x")
        self._thread.join(timeout=10)
        for key in list(self._sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        os.close(self._r)
        os.close(self._w)


def ask(ns: NsThread, address: str, port: int, *, timeout: float = 5.0) -> str:
    """One connection: connect, send a line, return the name that answered."""
    with ns.socket() as sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        return converse(sock)


def converse(sock: socket.socket) -> str:
    sock.sendall(b"hi\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data.decode().strip()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30.0,
             poll: float = 0.02) -> float:
    """Wait until ``condition()``; return when it first held (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def ipvs_weights(director: NsThread) -> dict[str, dict[str, int]]:
    """``/proc/net/ip_vs`` of the director: {"TCP C0000201:1F90": {"0A46020B:1F90": 1}}.

    Addresses are the kernel's hex; :func:`hexaddr` builds the keys."""
    table: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in director.read("/proc/thread-self/net/ip_vs").splitlines()[3:]:
        tokens = line.split()
        if tokens and tokens[0] in ("TCP", "UDP", "FWM"):
            current = table[f"{tokens[0]} {tokens[1]}"] = {}
        elif tokens and tokens[0] == "->" and current is not None:
            current[tokens[1]] = int(tokens[3])
    return table


def hexaddr(address: str, port: int) -> str:
    return socket.inet_aton(address).hex().upper() + f":{port:04X}"


def batch(ns: str | None, cmds: list[str]) -> None:
    """``cmds`` (``ip`` commands without the ``ip``) in one process, in namespace ``ns``."""
    where = ["-n", ns] if ns is not None else []
    sh("ip", *where, "-batch", "-", stdin="\n".join(cmds) + "\n")


@dataclass
class Lab:
    """The namespaces of the topology above, with a thread in each."""

    tag: str
    names: dict[str, str] = field(default_factory=dict)
    threads: dict[str, NsThread] = field(default_factory=dict)

    def __getitem__(self, role: str) -> NsThread:
        return self.threads[role]

    def ns(self, role: str) -> str:
        return self.names[role]


ROLES = ("client", "router", "director", "rs1", "rs2")
RS_ADDR = {"rs1": "10.70.2.11", "rs2": "10.70.2.12"}
DIRECTOR_ADDR = "10.70.2.1"
ROUTER_LAN = "10.70.2.254"
CLIENT_ADDR = "10.70.1.2"
VIP_NET = "192.0.2.0/24"


@contextlib.contextmanager
def lab(tag: str) -> Iterator[Lab]:
    """Build the topology (``ip -batch``), yield it, remove every namespace."""
    names = {role: f"acdt-{tag}-{role}-{os.getpid() % 10000}" for role in ROLES}
    n = names
    # ``ip -batch`` takes no ``-n`` per line: one batch per namespace, in dependency order
    batches: list[tuple[str | None, list[str]]] = [(None, [f"netns add {n[r]}" for r in ROLES])]
    batches.append((n["client"], [
        "link set lo up",
        f"link add c0 type veth peer name r-c netns {n['router']}",
        f"addr add {CLIENT_ADDR}/24 dev c0",
        "link set c0 up",
        "route add default via 10.70.1.1",
    ]))
    lan_addr = {"director": DIRECTOR_ADDR, **RS_ADDR}
    for role, address in lan_addr.items():
        cmds = [
            "link set lo up",
            f"link add eth0 type veth peer name p-{role} netns {n['router']}",
            f"addr add {address}/24 dev eth0",
            "link set eth0 up",
        ]
        if role == "director":
            cmds.append(f"route add 10.70.1.0/24 via {ROUTER_LAN}")
        else:
            # NAT: replies from the real server's own address go back through the director
            cmds.append(f"route add default via {DIRECTOR_ADDR}")
        batches.append((n[role], cmds))
    router = [
        "link set lo up",
        "addr add 10.70.1.1/24 dev r-c",
        "link set r-c up",
        "link add lan type bridge",
        f"addr add {ROUTER_LAN}/24 dev lan",
        "link set lan up",
    ]
    for role in lan_addr:
        router += [f"link set p-{role} master lan", f"link set p-{role} up"]
    router.append(f"route add {VIP_NET} via {DIRECTOR_ADDR}")
    batches.append((n["router"], router))
    result = Lab(tag, names)
    try:
        for ns, cmds in batches:
            batch(ns, cmds)
        for role in ROLES:
            result.threads[role] = NsThread(names[role])
        result["router"].sysctl("net.ipv4.ip_forward", "1")
        # one-armed NAT: the director forwards replies out of the interface they came in
        # on; an ICMP redirect would teach the real servers to bypass it
        for key in ("all", "default", "eth0"):
            result["director"].sysctl(f"net.ipv4.conf.{key}.send_redirects", "0")
        yield result
    finally:
        for thread in result.threads.values():
            thread.close()
        for name in names.values():
            sh("ip", "netns", "delete", name, check=False)
