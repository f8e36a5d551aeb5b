"""Worker processes that share the connections evenly: the primary accepts, the least busy worker serves.

With uvicorn's own ``--workers`` every worker accepts on the one shared socket, and whichever
wakes first takes every connection that is waiting (libuv accepts in a loop; its
``UV_TCP_SINGLE_ACCEPT`` did not change that here).  A few long-lived keep-alive connections, such
as a PACS gateway or a STOW client with two uploads in flight, then often share one worker while
the other idles: two STOW connections on one of two workers stored about 310 instances/s here,
spread over both about 420.  Node's cluster module reached the same conclusion and made its
primary accept and hand connections out (SCHED_RR).  We do that, choosing the worker with the
fewest open connections (ties in turn), and pass each connection's descriptor over a Unix
socket (SCM_RIGHTS).  The primary only accepts: the bytes flow between client and worker.

The primary restarts a worker that dies, and stops them all, gracefully, on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from dicomweb_server import logs

log = logging.getLogger(__name__)
_spawn = multiprocessing.get_context("spawn")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# accept() errors that pass (the connection stays queued); any other is a bug and stops the server
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPERM}
RESTART_PAUSE = 1.0  # seconds between restarts of one worker, so a worker that cannot start does not spin


class _Handoff:
    """The worker's stand-in for a listening server: connections arrive as descriptors on ``channel``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        channel: socket.socket,
        create_protocol: Callable[[], asyncio.Protocol],
        ssl: Any,
        on_eof: Callable[[], None],
        on_lost: Callable[[], None],
    ):
        self.loop = loop
        self.channel = channel
        self.create_protocol = create_protocol
        self.ssl = ssl
        self.on_eof = on_eof
        self.on_lost = on_lost  # a connection that never reached its protocol still counts as closed
        self.pending: set[asyncio.Task[Any]] = set()
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), self._receive)

    def _receive(self) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(self.channel, 1, 16)
        except BlockingIOError:
            return
        except OSError:
            fds = []
        if not fds:  # the primary stopped (or died): finish the open requests and exit
            self.close()
            self.on_eof()
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(self.create_protocol, conn, ssl=self.ssl)
            )
            self.pending.add(task)
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[Any]) -> None:
        self.pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.on_lost()
            if not task.cancelled():
                log.warning("could not take over a connection", extra={"event": "handoff_failed"})

    def close(self) -> None:
        if self.channel.fileno() >= 0:
            self.loop.remove_reader(self.channel.fileno())
            self.channel.close()

    async def wait_closed(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


class _WorkerServer(uvicorn.Server):
    """uvicorn's server with connections from the primary instead of a listening socket of its own."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket, closed: Any, index: int):
        super().__init__(config)
        self.channel = channel
        self.closed = closed
        self.index = index

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, lost = self.config, self._lost

        def create_protocol() -> asyncio.Protocol:
            # The protocol (connections.GuardedHttp) calls on_closed when its connection ends.
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, on_closed=lost
            )
            return protocol

        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop, self.channel, create_protocol, config.ssl, self._exit, lost)
        self.servers = [handoff]  # type: ignore[list-item]  # uvicorn only calls close() and wait_closed()
        self.started = True

    def _exit(self) -> None:
        self.should_exit = True

    def _lost(self) -> None:
        self.closed[self.index] += 1  # this worker is the only writer of its slot


def _worker_main(
    config: uvicorn.Config, channel: socket.socket, closed: Any, index: int, level: str, libraries: bool
) -> None:
    logs.configure(level, libraries)
    # Ctrl-C in a terminal signals the whole process group: uvicorn shuts down, then re-raises
    # SIGINT; the primary stops the others, so a worker ends quietly.
    with contextlib.suppress(KeyboardInterrupt):
        _WorkerServer(config, channel, closed, index).run()


class _Worker:
    def __init__(self, index: int, closed: Any):
        self.index = index
        self.closed = closed
        self.process: Any = None
        self.channel: socket.socket | None = None
        self.assigned = 0
        self.started_at = 0.0

    @property
    def open_connections(self) -> int:
        return self.assigned - int(self.closed[self.index])

    def start(self, config: uvicorn.Config, level: str, libraries: bool = True) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self.closed[self.index] = 0
        self.assigned = 0
        self.process = _spawn.Process(
            target=_worker_main,
            args=(config, theirs, self.closed, self.index, level, libraries),
            daemon=False,
        )
        self.process.start()
        theirs.close()
        self.channel = ours
        self.started_at = time.monotonic()

    def hand(self, conn: socket.socket) -> bool:
        if self.channel is None:
            return False
        try:
            socket.send_fds(self.channel, [b"c"], [conn.fileno()])
        except OSError:  # gone, or its queue is full: another worker takes it
            return False
        self.assigned += 1
        return True

    def forget_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


class Supervisor:
    """The primary: accept, hand each connection to the least busy worker, keep the workers running."""

    def __init__(self, config: uvicorn.Config, workers: int, level: str = "INFO", libraries: bool = True):
        self.config = config
        self.level = level
        self.libraries = libraries  # log the libraries' INFO lines too (logs.configure)
        closed = _spawn.Array("q", workers, lock=False)
        self.workers = [_Worker(i, closed) for i in range(workers)]
        self.turn = 0
        self.stopping = False
        self.failed = False

    def pick(self) -> list[_Worker]:
        """Workers in order of preference: fewest open connections, ties in turn."""
        n = len(self.workers)
        return sorted(self.workers, key=lambda w: (w.open_connections, (w.index - self.turn) % n))

    def dispatch(self, conn: socket.socket) -> None:
        with conn:
            for worker in self.pick():
                if worker.hand(conn):
                    self.turn = (worker.index + 1) % len(self.workers)
                    return
            log.warning("no worker could take a connection", extra={"event": "handoff_failed"})

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM; the exit status (3, as uvicorn, if a worker could not start)."""
        listener = self.config.bind_socket()
        listener.listen(self.config.backlog)
        listener.setblocking(False)
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        on_signal = functools.partial(self._on_signal, wake_w)
        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        selector = selectors.DefaultSelector()
        try:
            for worker in self.workers:
                worker.start(self.config, self.level, self.libraries)
            log.info(
                "serving with %d worker processes",
                len(self.workers),
                extra={"event": "workers_started", "pids": [w.process.pid for w in self.workers]},
            )
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while not self.stopping:
                for key, _ in selector.select(timeout=0.5):
                    if key.fileobj is listener:
                        self._accept_all(listener)
                    else:
                        with contextlib.suppress(OSError):
                            wake_r.recv(64)
                self._restart_dead()
        finally:
            selector.close()
            listener.close()
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
        return STARTUP_FAILURE if self.failed else 0

    def _on_signal(self, wake: socket.socket, signum: int, frame: Any) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            wake.send(b"x")

    def _accept_all(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                # Out of descriptors or memory: the connection waits in the backlog meanwhile.
                log.warning("accept failed: %s", exc.strerror, extra={"event": "accept_failed"})
                time.sleep(0.1)
                return
            self.dispatch(conn)

    def _restart_dead(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive() or self.stopping:
                continue
            code = worker.process.exitcode
            worker.forget_channel()
            if code == STARTUP_FAILURE:
                # The application itself cannot start (the database is unreachable, say): stop, as
                # uvicorn does, rather than restart in a loop.
                log.error("a worker could not start; stopping", extra={"event": "worker_failed"})
                self.stopping = self.failed = True
                return
            if time.monotonic() - worker.started_at < RESTART_PAUSE:
                continue
            log.warning(
                "worker %d exited with code %s; starting another",
                worker.index,
                code,
                extra={"event": "worker_restarted"},
            )
            worker.start(self.config, self.level, self.libraries)

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.forget_channel()  # no more connections; a worker seeing EOF stops taking them
            if worker.process is not None and worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 10) + 5
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
