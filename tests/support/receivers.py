"""Test doubles of a platform's webhook receiver and of DNS: an HTTP(S) receiver that records
what reached it (Host header, TLS server name), one that drips its answer or never answers, a
certificate authority made with the `openssl` command, an in-process resolver table; and the
callbacks worker as `moderation up` runs it."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from moderation.queue import Q_CALLBACKS
from tests.support.processes import CELERY, Proc, Procs


class Receiver:
    """A platform endpoint on 127.0.0.1 that refuses its first `refuse` deliveries (503) and takes
    the next ones. With `tls` (a Certs) it speaks https and records the TLS server name (SNI)."""

    def __init__(self, refuse: int = 0, tls: Certs | None = None) -> None:
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        self.server_names: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if len(outer.calls) < refuse else 200
                outer.calls.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.leaf, tls.leaf_key)

            def sni(_sock: Any, name: str | None, _ctx: Any) -> None:
                outer.server_names.append(name)

            context.sni_callback = sni
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DripReceiver:
    """Accepts connections and answers one byte every `every` seconds, forever (never finishing
    its headers), or, with `silent`, never sends anything at all."""

    def __init__(self, every: float = 0.5, silent: bool = False) -> None:
        self.every, self.silent = every, silent
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100_000
        with conn:
            for byte in answer:
                if self._stop.wait(self.every):
                    return
                if not self.silent:
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@dataclass
class Certs:
    """A throwaway CA (`ca`, the bundle to trust) and a leaf certificate for `names`."""

    ca: Path
    leaf: Path
    leaf_key: Path


def make_certs(folder: Path, names: tuple[str, ...] = ("receiver.test",)) -> Certs:
    """A CA and a server certificate for `names` (DNS names), made with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-x509", *ec, *ca_ext, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={names[0]}")
    (folder / "leaf.ext").write_text(
        "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")  # fmt: skip
    return Certs(folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key")


_REAL_GETADDRINFO = socket.getaddrinfo


class FakeDNS:
    """A resolver table for `socket.getaddrinfo` (monkeypatched in-process). A Unicode name is
    looked up as the C library gets it from Python's socket module: encoded with Python's `idna`
    codec (IDNA 2003). Numeric hosts go to the real function (no DNS). An answer may be a
    callable: called on each lookup (a rebinding name answers differently each time)."""

    def __init__(self, table: dict[str, list[str] | Callable[[], list[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if isinstance(host, bytes):
            host = host.decode("ascii")
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(str(host).split("%", 1)[0])
            return _REAL_GETADDRINFO(host, port, family, type, proto, flags)
        name = str(host) if str(host).isascii() else str(host).encode("idna").decode("ascii")
        name = name.lower().rstrip(".")
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = self.table[name]
        addresses = answer() if callable(answer) else answer
        port = int(port or 0)
        out: list[Any] = []
        for a in addresses:
            ip = ipaddress.ip_address(a)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port)))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port, 0, 0)))
        return out


def answers_in_turn(*answers: list[str]) -> Callable[[], list[str]]:
    """A rebinding name: the first lookup gets answers[0], the next answers[1], ... (the last repeats)."""
    calls = iter(range(10**9))

    def answer() -> list[str]:
        return answers[min(next(calls), len(answers) - 1)]

    return answer


def elapsed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result: object = fn()
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


_serial = itertools.count(1)


def callbacks_worker(procs: Procs, **extra_env: str) -> Proc:
    """The callbacks worker as `moderation up` and compose run it: the callbacks queue, a thread
    pool; returned once it answers ping."""
    node = f"testhooks{os.getpid()}-{next(_serial)}@%h"
    args = ["worker", "-Q", Q_CALLBACKS, "-P", "threads", "-c", "4", "-n", node, "--loglevel", "info"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return procs.start("callbacks", [*CELERY, *args], procs.ping(node), 60, f"answering ping as {node}", **extra_env)
