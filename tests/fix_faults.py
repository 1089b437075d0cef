"""Faults for the fault matrix: a TCP proxy that delays and cuts connections, and the
processes of a PostgreSQL cluster (to freeze them with SIGSTOP)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import threading
import time
from pathlib import Path


class TcpProxy:
    """127.0.0.1:<port> → target, each chunk delayed by ``latency`` seconds each way;
    ``cut()`` drops every open connection at once (a network blip; clients see a reset)."""

    def __init__(self, target_port: int, latency: float = 0.0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.latency = latency
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([src], [], [], 0.5)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if self.latency:
                    time.sleep(self.latency)
                dst.sendall(data)
        except (OSError, ValueError):   # ValueError: select() on a socket cut() closed
            pass
        finally:
            self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
            with self._lock:
                self._open.discard(s)

    def cut(self) -> int:
        with self._lock:
            victims = list(self._open)
        for s in victims:
            with contextlib.suppress(OSError):   # RST, not FIN: as a broken path looks
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close(*victims)
        return len(victims) // 2

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self.cut()


def cluster_pids(data: Path) -> list[int]:
    """The postmaster and every backend of the cluster whose data directory is ``data``."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def freeze(data: Path, seconds: float) -> None:
    """SIGSTOP a whole cluster for ``seconds`` (a frozen VM: TCP accepted, nothing answers)."""
    pids = cluster_pids(data)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
