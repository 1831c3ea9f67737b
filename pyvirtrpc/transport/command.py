"""The ssh family and ext transports: a local command whose stdin and stdout carry the protocol.

Contract:

* :func:`connect(plan, timeout) <connect>` runs ``plan.argv`` (built by
  :func:`pyvirtrpc.uri.plan` exactly as libvirt builds it: the ``ssh``
  command line of ``virNetSocketNewConnectSSH`` for ``ssh``, ``libssh`` and
  ``libssh2``; ``[command]`` for ``ext``) the way
  ``virNetSocketNewConnectCommand`` does, and returns a
  :class:`CommandChannel`:

  - stdin and stdout of the child are one end of an ``AF_UNIX`` stream
    socketpair; the channel *is* the other end (a real socket: blocking
    I/O for the sync client, ``poll``/``select`` for event loops, and a
    hand-over to asyncio through :meth:`CommandChannel.asyncio_adopt`);
  - stderr is a pipe drained by a small daemon thread into a bounded
    buffer (the last :data:`STDERR_LIMIT` bytes), so a chatty child can
    never block on a full pipe;
  - the environment is only ``plan.env_set`` plus the ``plan.env_pass``
    variables that are set (libvirt's ``virCommandAddEnvPassCommon`` and
    friends); no other file descriptor reaches the child (``close_fds``,
    and every descriptor of ours is close-on-exec); signal dispositions
    that Python changes (SIGPIPE) are restored; the child keeps our
    session and controlling terminal, as with libvirt, so ``ssh`` may ask
    for a password there unless ``no_tty=1``.
  - The program is found as libvirt's ``virCommandRunAsync`` finds it: an
    absolute name is executed as is; any other name must be an executable
    regular file (relative to the working directory when it contains a
    ``/``, else in ``$PATH``, ``/bin:/usr/bin`` without one), otherwise
    ``VIR_ERR_SYSTEM_ERROR``/``VIR_FROM_NONE`` "Cannot find 'NAME' in path:
    No such file or directory" (errno ENOENT).  When ``execve`` itself fails
    libvirt's forked child prints "libvirt:  error : cannot execute binary
    NAME: <strerror>" to the stderr pipe and dies, and the C client then
    reports ``SYSTEM_ERROR``/``VIR_FROM_RPC`` "Cannot recv data: <that
    text>: Connection reset by peer" (errno ECONNRESET) from its first
    read; the same error is raised here at once.

* I/O errors carry the child's stderr as libvirt's ``virNetSocketReadWire``
  reports them: a read error is "Cannot recv data: <stderr>: <strerror>"
  and EOF is "End of file while reading data: <stderr>: Input/output
  error" (``SYSTEM_ERROR``/``VIR_FROM_RPC``, errno in int1; trailing
  whitespace stripped; libvirt writes the ``: <stderr>`` part even when
  stderr was empty, and so do we).  Before building the message the
  channel waits up to :data:`STDERR_GRACE` seconds for the child's stderr
  to reach EOF, so the text is complete; no wait happens when we closed
  the channel ourselves.  A dead child therefore fails pending calls at
  once: its socket end closes with it.

* ``is_secure`` is ``plan.is_secure`` (true for the ssh family, false for
  ext: libvirt cannot vouch for an external program); ``is_encrypted`` is
  false (libvirt counts only TLS and SASL).  ``pid``, ``returncode``,
  ``argv`` and :meth:`CommandChannel.stderr_text` are there for callers
  and tests.

* :meth:`CommandChannel.close` closes the socket, then stops and reaps the
  child as ``virProcessAbort`` does: nothing to do if it has exited, else
  SIGTERM, a short grace (:data:`TERM_GRACE`), then SIGKILL and a blocking
  wait.  No zombie is left; a channel dropped without ``close()`` does the
  same when collected.

Where this differs from libvirt 9.0, and why:

* Write errors: libvirt's "Cannot write data: <strerror>" never includes
  stderr; here the child's stderr is added ("Cannot write data: <stderr>:
  Broken pipe") when there is some, because a child that died before our
  first write otherwise leaves only "Broken pipe" to go on.  Sends use
  ``MSG_NOSIGNAL``, so a dead child never raises SIGPIPE even in an
  application that restored its default action.
* Stderr longer than 1024 bytes: libvirt then drops it altogether
  (``virFileReadLimFD`` fails with EFBIG and the message has no stderr
  part); here the last :data:`STDERR_LIMIT` bytes are kept, from the start
  of a line, where the reason for a failure usually is.
* libvirt reads stderr only after the socket failed, with a blocking read
  that can hang if a grandchild keeps the pipe open; here it is drained all
  along and the wait is bounded.
* ``virCommandClearCaps`` (dropping capabilities in the child when run by
  root) is not reproduced: Python has no portable way to do it, and ssh
  does not need capabilities either way.
* ``libssh`` and ``libssh2``: libvirt runs those SSH stacks in-process
  (host key checks and passwords through the application's auth callback,
  the channel in the client process).  Here they run the system ``ssh``
  with the command line :func:`pyvirtrpc.uri.plan` derives from their
  parameters (user ``root`` by default, ``known_hosts`` /
  ``known_hosts_verify`` as ``UserKnownHostsFile`` /
  ``StrictHostKeyChecking``, ``sshauth`` as ``PreferredAuthentications``,
  ``keyfile`` as ``-i``), through the same socketpair mechanism as
  ``ssh``.  So: prompts (passwords, unknown host keys) come from ssh on the
  terminal, not from the auth callback; ``~/.ssh/config`` applies; errors
  are ssh's stderr in a ``SYSTEM_ERROR`` ("Cannot recv data: ...") rather
  than libvirt's ``VIR_ERR_LIBSSH``/``VIR_ERR_SSH`` messages; and
  ``is_secure`` is true as for ``ssh``.
* ``timeout`` does not bound the spawn (it is immediate); the open's
  timeout bounds the handshake over the channel.  libvirt has no timeout
  at all: an ssh waiting on a prompt blocks the open in both.
"""

from __future__ import annotations

import errno as _errno
import os
import select
import signal
import socket
import stat
import subprocess
import threading

from .. import _log
from .._gen import constants as C
from ..errors import libvirtError, system_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["CommandChannel", "connect", "spawn", "find_program", "build_env", "STDERR_LIMIT"]

#: bytes of the child's stderr kept for error messages (libvirt reads at most 1024)
STDERR_LIMIT = 1024
#: how long a failure waits for the child's stderr to reach EOF before reporting
STDERR_GRACE = 0.5
#: SIGTERM -> SIGKILL delay on close (libvirt's virProcessAbort waits 10 ms)
TERM_GRACE = 0.1
#: libvirt's fallback when $PATH is unset (virFindFileInPath)
DEFAULT_PATH = "/bin:/usr/bin"

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _debug(message: str, *args: object) -> None:
    if _log.debug_enabled("rpc.netsocket"):
        log = _log.logger("rpc.netsocket")
        if log is not None:
            log.debug(message, *args)


# ------------------------------------------------------------- the program
def _is_executable(path: str) -> bool:
    """virFileIsExecutable: a regular file with some execute bit (ACLs are not asked)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def find_program(name: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The file libvirt would execute for ``name`` (see the module docstring), or None."""
    if name.startswith("/"):
        # virCommandRunAsync does not search or check absolute names: exec decides
        return name
    if "/" in name:
        return os.path.abspath(name) if _is_executable(name) else None
    if not name:
        return None
    path = (os.environ if env is None else env).get("PATH")
    if path is None:
        path = DEFAULT_PATH
    for directory in path.split(":"):
        candidate = f"{directory}/{name}"  # an empty entry gives "/name", as in libvirt
        if _is_executable(candidate):
            return candidate
    return None


def build_env(
    env_set: Sequence[tuple[str, str]], env_pass: Sequence[str], source: Optional[Mapping[str, str]] = None
) -> dict[str, str]:
    """The child's whole environment: the passed variables that are set, then the fixed ones."""
    src = os.environ if source is None else source
    env = {name: src[name] for name in env_pass if name in src}
    env.update(env_set)
    return env


# ---------------------------------------------------------------- stderr
class _StderrTail:
    """Drains the child's stderr pipe into a bounded buffer, in a daemon thread.

    The thread owns the pipe's read end and closes it when the pipe reaches
    EOF, or soon after :meth:`stop` (it polls with a short timeout so that
    a grandchild holding the pipe open cannot keep it alive for ever).
    """

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._truncated = False
        self._stop = False
        self.done = threading.Event()
        self._on_done: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while True:
                if not poller.poll(200):
                    if self._stop:
                        break
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                with self._lock:
                    buf = self._buf
                    buf += chunk
                    if len(buf) > STDERR_LIMIT:
                        del buf[: len(buf) - STDERR_LIMIT]
                        self._truncated = True
        finally:
            os.close(fd)
            with self._lock:
                self.done.set()
                callbacks, self._on_done = self._on_done, []
            for cb in callbacks:
                cb()

    def when_done(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` (from the drain thread, or now) once stderr reached EOF."""
        with self._lock:
            if not self.done.is_set():
                self._on_done.append(cb)
                return
        cb()

    def text(self) -> str:
        """What was captured, decoded, trailing whitespace stripped (as libvirt does)."""
        with self._lock:
            data = bytes(self._buf)
            truncated = self._truncated
        if truncated:
            # keep whole lines: the cut most likely fell inside one
            nl = data.find(b"\n")
            if 0 <= nl < len(data) - 1:
                data = data[nl + 1 :]
        return data.decode("utf-8", "replace").rstrip(" \t\n\v\f\r")

    def stop(self, wait: float = 0.0) -> None:
        self._stop = True
        if wait > 0:
            self.done.wait(wait)


# --------------------------------------------------------------- channel
class CommandChannel(socket.socket):
    """Our end of the socketpair to a child process (see the module docstring)."""

    is_secure = True
    is_encrypted = False
    transport = "ext"

    _proc: Optional[subprocess.Popen[bytes]] = None
    _stderr: Optional[_StderrTail] = None
    _local_close = False
    _reaped = False
    argv: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<CommandChannel {self.transport} pid={self.pid} fd={self.fileno()}>"

    # ----------------------------------------------------------- facts
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> Optional[int]:
        """The child's exit status once it has been reaped (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    def stderr_text(self, wait: float = 0.0) -> str:
        """The child's stderr so far (the last :data:`STDERR_LIMIT` bytes), waiting up to
        ``wait`` seconds for it to reach EOF."""
        tail = self._stderr
        if tail is None:
            return ""
        if wait > 0 and not self._local_close:
            tail.done.wait(wait)
        return tail.text()

    def failure(self, what: str, errno: int) -> libvirtError:
        """The error libvirt reports for a failed read (``what`` is its message prefix)."""
        return system_error(C.VIR_FROM_RPC, errno, f"{what}: {self.stderr_text(STDERR_GRACE)}")

    # -------------------------------------------------------------- I/O
    def recv(self, n: int, flags: int = 0, /) -> bytes:
        try:
            data = super().recv(n, flags)
        except (socket.timeout, BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            if self._local_close:
                raise
            raise self.failure("Cannot recv data", exc.errno or _errno.EIO) from None
        if not data and n and not self._local_close:
            raise self.failure("End of file while reading data", _errno.EIO)
        return data

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        try:
            super().sendall(data, flags | _MSG_NOSIGNAL)
        except (socket.timeout, BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            if self._local_close:
                raise
            text = self.stderr_text(STDERR_GRACE)
            detail = f"Cannot write data: {text}" if text else "Cannot write data"
            raise system_error(C.VIR_FROM_RPC, exc.errno or _errno.EIO, detail) from None

    def shutdown(self, how: int, /) -> None:
        # we are tearing the connection down: a reader woken by this must not
        # wait for the child's stderr, nor dress its EOF up as the child's failure
        self._local_close = True
        super().shutdown(how)

    # --------------------------------------------------------- lifetime
    def close(self) -> None:
        self._local_close = True
        try:
            super().close()
        finally:
            self._terminate()

    def _terminate(self) -> None:
        """virProcessAbort: reap if exited, else SIGTERM, a grace, SIGKILL, reap."""
        proc = self._proc
        if proc is None or self._reaped:
            return
        self._reaped = True
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(TERM_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        except OSError:
            pass
        _debug("command pid=%s ended with status %s", proc.pid, proc.returncode)
        tail = self._stderr
        if tail is not None:
            # the child is gone: its stderr is at EOF unless a grandchild holds it
            tail.stop(wait=0.05)

    def __del__(self) -> None:
        # dropped without close(): still reap the child and free the descriptors
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    # ---------------------------------------------------------- asyncio
    async def asyncio_adopt(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], Any]) -> None:
        """Run the connection on ``loop``: the transport gets the socket, we keep the child.

        asyncio's transport reads with ``recv`` and treats anything but an
        ``OSError`` as a fatal bug, so it gets a plain socket on our
        descriptor; EOF and errors come back through :class:`_AsyncBridge`,
        which adds the child's stderr as the sync path does and reaps the
        child when the transport closes.
        """
        plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.detach())
        bridge: Any = _AsyncBridge(self, protocol_factory(), loop)  # an asyncio.Protocol by duck typing
        try:
            await loop.create_connection(lambda: bridge, sock=plain)
        except BaseException:
            plain.close()
            self.close()
            raise


def _hung_up(sock: Any) -> bool:
    """Did the other end go away (POLLHUP)?  libvirt's close reason EOF, else ERROR."""
    p = select.poll()
    try:
        p.register(sock.fileno(), select.POLLIN)
        ready = p.poll(0)
    except (OSError, ValueError):
        return False
    return any(ev & select.POLLHUP for _fd, ev in ready)


class _AsyncBridge:
    """asyncio.Protocol between the transport and the client's protocol, for a command channel."""

    def __init__(self, channel: CommandChannel, inner: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.inner = inner
        self.loop = loop
        self.transport: Any = None
        self._failing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        self._fail("End of file while reading data", _errno.EIO)
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        channel = self.channel
        if exc is not None and not channel._local_close:
            errno = getattr(exc, "errno", None) or _errno.EIO
            # asyncio does not say whether reading or writing failed; EPIPE only comes from a write
            self._fail("Cannot write data" if errno == _errno.EPIPE else "Cannot recv data", errno)
        elif not self._failing:
            self.inner.connection_lost(exc)
        if not self._failing:
            channel.close()  # reap the child (the socket itself belongs to the transport)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _fail(self, what: str, errno: int) -> None:
        """Fail the connection with the child's stderr in the message, as the sync path does."""
        if self._failing:
            return
        self._failing = True
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        # the socket is still open here: the same EOF/ERROR rule as the sync client
        eof = errno == _errno.EIO or (sock is not None and _hung_up(sock))
        reason = C.VIR_CONNECT_CLOSE_REASON_EOF if eof else C.VIR_CONNECT_CLOSE_REASON_ERROR
        channel = self.channel
        tail = channel._stderr
        state: dict[str, Any] = {"done": False, "timer": None}

        def report() -> None:
            if state["done"]:
                return
            state["done"] = True
            if state["timer"] is not None:
                state["timer"].cancel()
            text = channel.stderr_text()
            if what == "Cannot write data":  # as CommandChannel.sendall words it
                detail = f"{what}: {text}" if text else what
            else:
                detail = f"{what}: {text}"
            error = system_error(C.VIR_FROM_RPC, errno, detail)
            try:
                die = getattr(getattr(self.inner, "conn", None), "_die", None)
                if die is not None:
                    die(error, reason)
                else:  # a protocol of another kind: tell it the plain way
                    self.inner.connection_lost(OSError(errno, str(error)))
            finally:
                channel.close()  # only now: killing the child earlier could cut its last words

        if tail is None or tail.done.is_set():
            report()
            return
        # the child's stderr is not complete yet: wait for its EOF without blocking the loop
        state["timer"] = self.loop.call_later(STDERR_GRACE, report)
        loop = self.loop

        def from_thread() -> None:
            try:
                loop.call_soon_threadsafe(report)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                pass

        tail.when_done(from_thread)


# ----------------------------------------------------------------- spawn
def _exec_failure(name: str, errno: int) -> libvirtError:
    # libvirt's child reports the failed execve on stderr ("libvirt: <domain> error : ...",
    # the domain being empty for VIR_FROM_NONE) and exits; the parent has already written
    # the first packet, so its first read fails with ECONNRESET and shows that text.
    text = f"libvirt:  error : cannot execute binary {name}: {os.strerror(errno)}"
    return system_error(C.VIR_FROM_RPC, _errno.ECONNRESET, f"Cannot recv data: {text}")


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    transport: str = "ext",
    is_secure: bool = False,
) -> CommandChannel:
    """virNetSocketNewConnectCommand: run ``argv`` on a socketpair (see the module docstring)."""
    if not argv:
        raise ValueError("empty command line")
    name = argv[0]
    program = find_program(name)
    if program is None:
        raise system_error(C.VIR_FROM_NONE, _errno.ENOENT, f"Cannot find '{name}' in path")
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise system_error(C.VIR_FROM_RPC, exc.errno or _errno.EMFILE, "unable to create socket pair") from None
    try:
        err_r, err_w = os.pipe()  # both close-on-exec (PEP 446); the child gets err_w as fd 2
    except OSError as exc:
        ours.close()
        theirs.close()
        raise system_error(C.VIR_FROM_RPC, exc.errno or _errno.EMFILE, "Unable to create pipe") from None
    channel: Optional[CommandChannel] = None
    try:
        channel = CommandChannel(socket.AF_UNIX, socket.SOCK_STREAM, 0, ours.detach())
        channel.transport = transport
        channel.is_secure = is_secure
        channel.argv = tuple(argv)
        try:
            proc = subprocess.Popen(
                list(argv),
                executable=program,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=err_w,
                env=dict(env),
                close_fds=True,
                restore_signals=True,
            )
        except OSError as exc:
            # Popen reaped the child that could not exec
            raise _exec_failure(name, exc.errno or _errno.ENOEXEC) from None
        channel._proc = proc
        _debug("spawned %s pid=%d", " ".join(argv), proc.pid)
    except BaseException:
        theirs.close()
        os.close(err_w)
        os.close(err_r)
        if channel is not None:
            channel.close()
        else:
            ours.close()
        raise
    # the child holds its own copies now; ours would keep EOF from ever coming
    theirs.close()
    os.close(err_w)
    channel._stderr = _StderrTail(err_r, f"pyvirtrpc-stderr-{proc.pid}")
    return channel


def connect(plan: Any, timeout: Optional[float] = None) -> CommandChannel:
    """The channel for an ssh, libssh, libssh2 or ext plan (see the module docstring)."""
    argv = plan.argv
    if not argv:
        raise ValueError(f"the plan for transport {plan.transport!r} has no command line")
    env = build_env(plan.env_set, plan.env_pass)
    return spawn(argv, env, transport=plan.transport, is_secure=bool(plan.is_secure))
