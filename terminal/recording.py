"""asciicast v2 recordings of terminal output (https://docs.asciinema.org/manual/asciicast/v2/)."""

import codecs
import time

import orjson  # JSON-encoding every output byte on the event loop: the stdlib's encoder cost ~20% of throughput

from terminal.recordings import create_spool_file


def header(*, cols: int, rows: int, timestamp: int, title: str, env: dict | None = None) -> bytes:
    """The first line of an asciicast v2 recording."""
    fields = {"version": 2, "width": cols, "height": rows, "timestamp": timestamp}
    if env:
        fields["env"] = env
    return orjson.dumps({**fields, "title": title}) + b"\n"


def event(elapsed: float, kind: str, text: str) -> bytes:
    """One event line: `elapsed` seconds into the recording, kind "o" (output) or "r" (resize)."""
    return orjson.dumps([elapsed, kind, text]) + b"\n"


class AsciicastRecorder:
    """Writes one session's output to `<spool dir>/<relative_path>` (terminal/recordings.py hands it to the store
    when the session ends).

    Called from the event loop for every chunk the shell printed, so it only appends to the file; the page
    cache absorbs it. Unbuffered: what was written survives the portal process dying (SIGKILL, OOM) — one
    write per output chunk, not per byte. Input is deliberately not recorded (passwords typed at prompts).
    """

    def __init__(self, relative_path: str, *, cols: int, rows: int, title: str, shell: str):
        self.relative_path = relative_path
        self._file = create_spool_file(relative_path)  # closed in close()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = time.monotonic()
        self._file.write(header(cols=cols, rows=rows, timestamp=int(time.time()), title=title,
                                env={"TERM": "xterm-256color", "SHELL": shell}))

    def _event(self, kind: str, text: str):
        self._file.write(event(round(time.monotonic() - self._started, 6), kind, text))

    def output(self, data: bytes):
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, cols: int, rows: int):
        self._event("r", f"{cols}x{rows}")

    def close(self):
        if self._file.closed:
            return
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        self._file.close()
