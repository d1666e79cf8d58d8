"""A user's process whose standard output goes to the browser as it comes (file downloads).

run_captured (clusters/spawn.py) collects a command's whole output; a download may be gigabytes, so
here the output is handed on chunk by chunk, to a StreamingHttpResponse. The process starts the same
clean way (spawn_clean, in its own session) and is killed with its session when the transfer ends
early (the browser went away), when no output came for `idle_timeout` seconds, or when the whole
transfer took longer than `timeout`.

Under ASGI (daphne) Django reads a *synchronous* iterator whole into memory before sending it, so
`async_chunks()` reads the pipe on the event loop; `chunks()` is the same for WSGI and the test client.
"""

import asyncio
import os
import select
import signal
import tempfile
import time

from clusterra.durations import duration_words
from clusters.spawn import READ_CHUNK, reap, spawn_clean, wait_exit_code

STDERR_KEPT = 8 * 1024  # the start of the command's complaint, for the message


class StreamFailed(Exception):
    """The command failed or timed out; the message is fit for the user."""


class OutputStream:
    def __init__(self, argv: list[str], *, env: dict[str, str], timeout: float, idle_timeout: float):
        self.argv, self.timeout, self.idle_timeout = argv, timeout, idle_timeout
        self.deadline = time.monotonic() + timeout
        self.returncode: int | None = None
        # stderr into an unnamed file: it can never fill a pipe and stall the command.
        self._stderr = tempfile.TemporaryFile()
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._out, out_w = os.pipe()
        try:
            self.pid = spawn_clean(argv, stdio=(stdin, out_w, self._stderr.fileno()), env=env, new_session=True)
        except BaseException:
            os.close(self._out)
            self._stderr.close()
            raise
        finally:
            os.close(stdin)
            os.close(out_w)
        os.set_blocking(self._out, False)
        self._pending = b""  # what first_chunk() read, handed out again first
        self._eof = False
        self._closed = False

    # -- reading --------------------------------------------------------------------------------
    def _wait_left(self) -> float:
        return min(self.idle_timeout, self.deadline - time.monotonic())

    def _timed_out(self) -> StreamFailed:
        self.close()
        if time.monotonic() >= self.deadline:
            return StreamFailed(f"The transfer did not finish within {duration_words(self.timeout)} and was stopped.")
        return StreamFailed(f"The head node sent nothing for {duration_words(self.idle_timeout)}; the transfer was stopped.")

    def _read(self) -> bytes | None:
        """One chunk, b"" at the end (the caller then calls _finish), None when nothing is there yet."""
        try:
            return os.read(self._out, READ_CHUNK)
        except BlockingIOError:
            return None

    def _next_blocking(self) -> bytes:
        while True:
            data = self._read()
            if data == b"":
                self._finish()
            if data is not None:
                return data
            left = self._wait_left()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise self._timed_out()

    async def _next_async(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            data = self._read()
            if data == b"":
                await asyncio.to_thread(self._finish)  # waiting for the exit status must not hold daphne's event loop
            if data is not None:
                return data
            ready = loop.create_future()
            loop.add_reader(self._out, _set_once, ready)
            timed_out = False
            try:
                await asyncio.wait_for(ready, max(0.0, self._wait_left()))
            except TimeoutError:
                timed_out = True
            finally:
                loop.remove_reader(self._out)
            if timed_out:
                raise self._timed_out()

    def first_chunk(self) -> bytes:
        """Wait for the first output, so that a command failing at once (permission denied, no such
        file) is reported as a page before any byte of a download is sent. Raises StreamFailed."""
        self._pending = self._next_blocking()
        self._eof = not self._pending
        return self._pending

    def chunks(self) -> "_SyncChunks":
        return _SyncChunks(self)

    def async_chunks(self) -> "_AsyncChunks":
        return _AsyncChunks(self)

    # -- the end --------------------------------------------------------------------------------
    def _finish(self) -> None:
        """End of output: wait (bounded by the deadline) for the exit status; a failure raises."""
        self._eof = True
        code = reap(self.pid)
        if code is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                select.select([pidfd], [], [], max(0.1, min(5.0, self.deadline - time.monotonic())))
            finally:
                os.close(pidfd)
            code = reap(self.pid)
        if code is None:
            self.close()
            raise StreamFailed(f"{self.argv[-1]} sent all its output but did not exit; it was stopped.")
        self.returncode = code
        if code != 0:
            message = self.error_text()
            self.close()
            raise StreamFailed(message)

    def error_text(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read(STDERR_KEPT).decode("utf-8", "replace").strip()
        return text or f"{self.argv[-1]} failed (exit status {self.returncode})."

    def close(self) -> None:
        """Kill the command's session if it is still running, reap it, release the descriptors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.returncode = wait_exit_code(self.pid)  # at once: SIGKILL cannot be caught
            except ChildProcessError:
                pass
        os.close(self._out)
        self._stderr.close()


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _Chunks:
    """An iterable for StreamingHttpResponse with a close() that Django calls when the response ends (also
    when the browser went away, or before iteration began), so the command never outlives its download."""

    def __init__(self, stream: OutputStream):
        self.stream = stream

    def close(self) -> None:
        self.stream.close()


class _SyncChunks(_Chunks):
    def __iter__(self):
        stream = self.stream
        try:
            if stream._pending:
                yield stream._pending
            while not stream._eof and (data := stream._next_blocking()):
                yield data
        finally:
            stream.close()


class _AsyncChunks(_Chunks):
    async def __aiter__(self):
        stream = self.stream
        try:
            if stream._pending:
                yield stream._pending
            while not stream._eof and (data := await stream._next_async()):
                yield data
        finally:
            stream.close()
