"""What a person saw in a terminal session: the lines of a recording as they appeared on the screen.

Two inputs: an asciicast v2 recording (terminal/recording.py: output events with their time, resizes; also
an SSM agent's CloudWatch Logs stream, which terminal/cloudwatch.py turns into one) and an SSM agent's S3 log
(raw PTY output between `script`'s header and footer, no timing). The output is the
list of lines that were on the screen — no escape sequences, no backspaced-over characters, a progress bar
redrawn in place with `\\r` in its final state, a full-screen program (vim, less, top) as the text of its
screens — each with the time it was last drawn, and the commands typed at a shell prompt marked as such.

The terminal is emulated by pyte's Screen, which is pure Python (about 1 MB/s). Most of a session is
line-oriented output (printable text, colours, `\\r`, `\\b`, tabs, erasing within the line), and that is
handled by a fast path with string operations on whole lines that gives what pyte gives
(tests/test_transcript.py compares the two); a line that needs a real screen (cursor addressing, the
alternate screen, scroll regions) is handed, with the screen as it is, to pyte, and the fast path takes over
again once the screen holds plain lines. A line wrapped at the right margin stays one line, so that a long
command can still be found.
"""

import copy
import re
import unicodedata
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import itemgetter
from typing import NamedTuple

import orjson
import pyte
from pyte import modes
from pyte.screens import Char, Margins, StaticDefaultDict
from wcwidth import wcwidth

ASCIICAST = "asciicast"
SSM_S3 = "ssm_s3"
SSM_CLOUDWATCH = "ssm_cloudwatch"  # an asciicast recording too, indexed apart from the portal's own
LOG_KINDS = (ASCIICAST, SSM_S3, SSM_CLOUDWATCH)
OUTPUT, COMMAND = "output", "command"

DEFAULT_SIZE = (80, 24)
SSM_DEFAULT_SIZE = (200, 60)  # an SSM log does not say; wide, so that long lines are not split on a guess
MAX_SIZE = (2000, 1000)
READ_SIZE = 8 << 20  # bytes of a recording read at a time


class TranscriptLine(NamedTuple):
    offset: float | None  # seconds from the start of the session when the line was drawn; None in an SSM log
    kind: str  # OUTPUT or COMMAND
    text: str  # the whole line; a command's line includes the prompt
    prompt_end: int | None = None  # a command: where the typed command starts in text

    @property
    def command(self) -> str | None:
        return self.text[self.prompt_end:] if self.kind == COMMAND else None


@dataclass
class Transcript:
    lines: list[TranscriptLine] = field(default_factory=list)
    complete: bool = True  # False: the recording is corrupt or truncated, and `note` says how
    notes: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    def flag(self, note: str):
        self.complete = False
        self.notes.append(note)


# --- the lines ------------------------------------------------------------------------------------------

# The usual shell prompts, for shells that do not mark theirs (OSC 133): alice@hpc:~/src$ , [alice@hpc src]$ ,
# root@hpc:/# , alice@hpc ~ % (zsh), bash-5.2$ , sh-5.2# , a bare "$ "; each maybe after "(venv) ".
_PROMPT = re.compile(
    r"(?:\([\w.@:/+-]{1,64}\) )?"
    r"(?:[\w.-]{1,64}@[\w.-]{1,128}(?::[^\s$#%]*| [^\s$#%]+)? ?[$#%]"
    r"|\[[\w.-]{1,64}@[\w.-]{1,128}(?: [^\]]*)?\][$#]"
    r"|(?:-?bash|sh|zsh|ksh|dash)-\d+(?:\.\d+)*[$#]"
    r"|\$)"
    r" +(?=\S)"
)


class _Lines:
    """Collects the transcript: blank lines dropped, offsets never going back, commands recognised."""

    def __init__(self):
        self.lines: list[TranscriptLine] = []
        self.last = 0.0
        self.marked = False  # the shell marks its prompts (OSC 133): no guessing from then on

    def add_all(self, lines: list[tuple]):
        """Lines of the fast path, (text, time, prompt_end, rows, cells): add() for many, with less per line."""
        append, last, prompt, new = self.lines.append, self.last, None if self.marked else _PROMPT.match, tuple.__new__
        for text, time, prompt_end, _, _ in lines:
            if prompt_end is not None:
                self.last = last
                self.add(text, time, prompt_end)
                last = self.last
                continue
            text = text.rstrip(" ")
            if not text or text.isspace():
                continue
            if time is not None:
                time = last = time if time > last else last
            match = prompt(text) if prompt else None
            append(new(TranscriptLine, (time, COMMAND, text, match.end()) if match else (time, OUTPUT, text, None)))
        self.last = last

    def add(self, text: str, time: float | None, prompt_end: int | None = None, seen: set | None = None):
        text = text.rstrip(" ")
        if not text or text.isspace():
            return
        if seen is not None:  # a full-screen program's screens: each line once
            if text in seen:
                return
            seen.add(text)
        if time is not None:
            # A line that leaves the screen later than it was drawn was on the screen all that time, so any
            # time up to now shows it: keep the offsets in the order of the lines.
            time = self.last = time if time > self.last else self.last
        if seen is not None:
            kind, prompt_end = OUTPUT, None
        elif prompt_end is not None:
            kind = COMMAND if text[prompt_end:].strip() else OUTPUT
        elif not self.marked and (match := _PROMPT.match(text)):
            kind, prompt_end = COMMAND, match.end()
        else:
            kind = OUTPUT
        self.lines.append(TranscriptLine(time, kind, text, prompt_end if kind == COMMAND else None))


_WIDTHS: dict[str, int] = {}


def _narrow(text: str) -> bool:
    """Every character takes one cell (and is drawn): then a cell is a character, as in ASCII."""
    if text.isascii():
        return text.isprintable()
    widths = _WIDTHS
    for char in set(text):
        width = widths.get(char)
        if width is None:
            width = widths[char] = wcwidth(char) if len(widths) < 65536 else -1
        if width != 1:
            return False
    return True


def _cells(text: str) -> list[str]:
    """The screen cells of a line: one string a cell, "" for the right half of a wide character."""
    if text.isascii():
        return list(text)
    cells: list[str] = []
    for char in text:
        width = wcwidth(char)
        if width == 2:
            cells += (char, "")
        elif width == 1:
            cells.append(char)
        elif width == 0 and cells and unicodedata.combining(char):
            cells[-1] = unicodedata.normalize("NFC", cells[-1] + char)
    return cells


def _drawable(text: str) -> str:
    """Without control and zero-width characters, which pyte 0.8.2 stops drawing at (it drops the rest)."""
    if text.isascii():
        return text if text.isprintable() else "".join(c for c in text if " " <= c <= "~")
    return "".join(c for c in text if wcwidth(c) > 0 or (wcwidth(c) == 0 and unicodedata.combining(c)))


# --- the slow path: pyte ---------------------------------------------------------------------------------

# What each row remembers: when it was drawn, where a prompt ended on it, the width at which it wrapped to
# the next row (0: it did not), whether its line is in the transcript already.
_TIME, _PROMPT_AT, _WRAPPED, _TAKEN = range(4)
_AUTOWRAP = {modes.DECAWM}
_LATIN1 = pyte.charsets.LAT1_MAP


class _Chars(dict):
    """A cell of each character (pyte's Char with the default attributes), made once."""

    def __missing__(self, data: str) -> Char:
        char = self[data] = Char(data)
        return char


_CHARS = _Chars()
_DATA = itemgetter(0)  # a Char's data
_ALTERNATE = {47, 1047, 1049}


def _fresh() -> list:
    return [None, None, 0, False]


class _Screen(pyte.Screen):
    """pyte's Screen and what a transcript needs of it.

    Lines that leave the screen — scrolled off, deleted, erased, or a full-screen program's screen when it
    ends — go to the transcript. Each row remembers when it was last drawn, where a prompt ended on it (OSC
    133 B) and whether it goes on in the next row (wrapped at the margin). The alternate screen, which pyte
    lacks, is emulated; its lines go to the transcript once each.
    """

    def __init__(self, columns: int, lines: int, out: _Lines):
        self.out = out
        self.now: float | None = None  # the time of what is being drawn
        self.normal = None  # the normal screen while the alternate one is shown
        self.seen: set | None = None  # the lines of the alternate screen taken already
        self.carry = ""  # the first rows of a wrapped line that scrolled off before its last row
        self._drawing = False
        super().__init__(columns, lines)

    def row_cells(self, y: int, width: int = 0) -> list[str]:
        """The row's cells: up to the last one drawn, or `width` of them."""
        row = self.buffer.get(y)
        if not row:
            return [" "] * width
        return list(map(_DATA, map(row.__getitem__, range(width or min(max(row) + 1, self.columns)))))

    def line(self, first: int, last: int) -> tuple[str, int | None]:
        """The text of rows first..last (a wrapped line), and where a prompt ended in it."""
        text, prompt = "", None
        for y in range(first, last + 1):
            cells = self.row_cells(y, 0 if y == last else self.meta[y][_WRAPPED])
            at = self.meta[y][_PROMPT_AT]
            if at is not None:
                prompt = len(text) + len("".join(cells[:at])) + max(0, at - len(cells))
            text += "".join(cells)
        return text, prompt

    def emit(self, first: int, last: int):
        """Rows first..last leave the screen: a line for each run of wrapped rows (unless taken already)."""
        start = first
        for y in range(first, last + 1):
            if y == last or not self.meta[y][_WRAPPED]:
                if all(m[_TAKEN] for m in self.meta[start:y + 1]):
                    start = y + 1
                    continue
                text, prompt = self.line(start, y)
                if self.carry and start == (self.margins.top if self.margins else 0):  # the rest of the carried line
                    text, prompt = self.carry + text, None if prompt is None else prompt + len(self.carry)
                    self.carry = ""
                time = max((m[_TIME] for m in self.meta[start:y + 1] if m[_TIME] is not None), default=self.now)
                self.out.add(text, time, prompt, self.seen)
                start = y + 1

    def emit_all(self):
        self.emit(0, self.lines - 1)
        if self.carry:
            self.out.add(self.carry, self.now, None, self.seen)
            self.carry = ""

    # pyte's events, with the bookkeeping
    def draw(self, data: str):
        data = _drawable(data)
        if data:
            self._drawing = True
            try:
                self.draw_cells(data)
            finally:
                self._drawing = False
            self.meta[self.cursor.y][_TIME] = self.now
            self.meta[self.cursor.y][_TAKEN] = False

    def draw_cells(self, data: str):
        """pyte's draw, faster where it can be (characters one cell wide, the default charset, autowrap on,
        no insert mode), pyte's own otherwise. Only the characters are kept: no colours or other attributes."""
        if not (_narrow(data) and self.mode >= _AUTOWRAP and modes.IRM not in self.mode and not self.charset
                and self.g0_charset is _LATIN1):
            return super().draw(data)
        cursor, cols, at = self.cursor, self.columns, 0
        while at < len(data):
            if cursor.x == cols:  # wrap, as pyte does
                self.carriage_return()
                self.linefeed()
            n = min(len(data) - at, cols - cursor.x)
            cells = zip(range(cursor.x, cursor.x + n), map(_CHARS.__getitem__, data[at:at + n]), strict=True)
            self.buffer[cursor.y].update(cells)
            cursor.x += n
            at += n

    def linefeed(self):
        if self._drawing:  # pyte's draw wraps at the margin with a line feed
            self.meta[self.cursor.y][_WRAPPED] = self.columns
            self.meta[self.cursor.y][_TIME] = self.now
            self.meta[self.cursor.y][_TAKEN] = False
        super().linefeed()

    def index(self):
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == bottom:
            if self.meta[top][_WRAPPED]:
                self.carry += "".join(self.row_cells(top, self.meta[top][_WRAPPED]))
            else:
                self.emit(top, top)
            del self.meta[top]
            self.meta.insert(bottom, _fresh())
        super().index()

    def reverse_index(self):
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == top:
            self.emit(bottom, bottom)
            del self.meta[bottom]
            self.meta.insert(top, _fresh())
        super().reverse_index()

    def insert_lines(self, count=None):
        top, bottom = self.margins or Margins(0, self.lines - 1)
        y = self.cursor.y
        if top <= y <= bottom:
            count = min(count or 1, bottom - y + 1)
            self.emit(bottom - count + 1, bottom)
            for _ in range(count):
                del self.meta[bottom]
                self.meta.insert(y, _fresh())
            self._rows(y, bottom)
        super().insert_lines(count)

    def delete_lines(self, count=None):
        top, bottom = self.margins or Margins(0, self.lines - 1)
        y = self.cursor.y
        if top <= y <= bottom:
            count = min(count or 1, bottom - y + 1)
            self.emit(y, y + count - 1)
            for _ in range(count):
                del self.meta[y]
                self.meta.insert(bottom, _fresh())
            self._rows(y, bottom)
        super().delete_lines(count)

    def _rows(self, first: int, last: int):
        """pyte 0.8.2 moves only the rows that exist in its buffer (a dict), so a row moved onto a row not
        there yet is not cleared: make them all exist."""
        for y in range(first, last + 1):
            self.buffer[y]  # noqa: B018 (a defaultdict: this creates the row)

    def erase_in_display(self, how=0, *args, **kwargs):
        y = self.cursor.y
        rows = {0: range(y if self.cursor.x == 0 else y + 1, self.lines), 1: range(y)}.get(how, range(self.lines))
        if rows:
            self.emit(rows[0], rows[-1])
            for row in rows:
                self.meta[row] = _fresh()
        super().erase_in_display(how, *args, **kwargs)

    def erase_in_line(self, how=0, private=False):
        if how == 2 or (how == 0 and self.cursor.x == 0):
            self.meta[self.cursor.y][_WRAPPED] = 0
        super().erase_in_line(how, private)

    def reset(self):
        if hasattr(self, "meta"):  # RIS, not pyte's __init__
            if self.normal is not None:
                self.reset_mode(1049, private=True)
            self.emit_all()
        super().reset()
        self.meta = [_fresh() for _ in range(self.lines)]

    def resize(self, lines=None, columns=None):
        lines, columns = lines or self.lines, columns or self.columns
        if self.tabstops == set(range(8, self.columns, 8)):  # pyte keeps the stops of the old width
            self.tabstops = set(range(8, columns, 8))
        if self.normal is not None:  # the program draws its screen again at the new size
            self.emit_all()
            self.buffer.clear()
            self.meta = [_fresh() for _ in range(self.lines)]
        super().resize(lines, columns)  # fewer lines: delete_lines takes them off the top
        self.meta = (self.meta + [_fresh() for _ in range(lines)])[:lines]
        self.cursor.x = min(self.cursor.x, columns)
        self.cursor.y = min(self.cursor.y, lines - 1)

    def set_mode(self, *modes_, **kwargs):
        if kwargs.get("private") and _ALTERNATE.intersection(modes_):
            if self.normal is None:
                # The normal screen's lines come before the program's in the transcript, though they stay
                # on the normal screen (taken: not again when they leave it, unless drawn again).
                self.emit_all()
                for meta in self.meta:
                    meta[_TAKEN] = True
                self.normal = (self.buffer, self.meta, self.margins, self.carry, copy.copy(self.cursor))
                self.buffer = type(self.buffer)(lambda: StaticDefaultDict(self.default_char))
                self.meta, self.margins, self.carry, self.seen = [_fresh() for _ in range(self.lines)], None, "", set()
            modes_ = tuple(m for m in modes_ if m not in _ALTERNATE)
        super().set_mode(*modes_, **kwargs)

    def reset_mode(self, *modes_, **kwargs):
        if kwargs.get("private") and _ALTERNATE.intersection(modes_):
            if self.normal is not None:
                self.emit_all()
                self.buffer, meta, self.margins, self.carry, cursor = self.normal
                self.meta = (meta + [_fresh() for _ in range(self.lines)])[:self.lines]
                if 1049 in modes_:
                    self.cursor = cursor
                self.cursor.x = min(self.cursor.x, self.columns)
                self.cursor.y = min(self.cursor.y, self.lines - 1)
                self.normal = self.seen = None
            modes_ = tuple(m for m in modes_ if m not in _ALTERNATE)
        super().reset_mode(*modes_, **kwargs)

    def mark(self, letter: str):
        """An OSC 133 mark: B ends the prompt, and what is typed after it on the line is the command."""
        if letter == "B":
            self.meta[self.cursor.y][_PROMPT_AT] = self.cursor.x
            self.out.marked = True

    def plain(self) -> bool:
        """Plain lines again: the normal screen, no scroll region, the usual modes and tab stops, the
        cursor on the last row that holds anything."""
        if self.normal is not None or self.margins is not None or self.carry:
            return False
        if modes.DECAWM not in self.mode or self.mode & {modes.IRM, modes.LNM, modes.DECOM}:
            return False
        if self.tabstops != set(range(8, self.columns, 8)):
            return False
        y = self.cursor.y
        return not any(row_y > y and any(c.data.strip() for c in row.values()) for row_y, row in self.buffer.items())


# An escape sequence or a C0 control; anything else is text.
_SEQUENCE = re.compile(
    r"\x1b\[([?>=<]?)([0-9;:]*)([ -/]*)([@-~])"  # CSI: private marker, parameters, intermediates, final
    r"|\x1b\]([^\x07\x1b]*)(?:\x07|\x1b\\)"  # OSC
    r"|\x1b([()*+%#][0-~]|[ -/]*[0-~])"  # other escapes
    r"|([\x00-\x1a\x1c-\x1f\x7f])"
)
_INCOMPLETE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[()*+%#]|[ -/]+)?\Z")
_UNUSED = ("select_graphic_rendition", "report_device_status", "report_device_attributes")
_CSI = {final: name for final, name in pyte.Stream.csi.items() if name not in _UNUSED}
_CONTROLS = {char: name for char, name in pyte.Stream.basic.items() if name not in ("shift_in", "shift_out", "bell")}


class _Parser:
    """Feeds a _Screen: pyte's Stream, but one regex instead of a character-at-a-time state machine.

    It differs from pyte.Stream on purpose where pyte prints part of a sequence as text: SGR with colons
    (38:2::r:g:b), CSI with intermediates or a > = < marker, and OSC P/R are skipped whole.
    """

    def __init__(self, screen: _Screen):
        self.screen = screen
        self.tail = ""  # an escape sequence cut short at the end of what was fed

    def feed(self, data: str, at: int = 0, starts: list[int] | None = None, times: list[float] | None = None):
        """Output starting at `at` in the text whose events start at `starts` and were at `times` (None: no
        timing): each row's time is that of the event that drew on it last."""
        if self.tail:
            data, self.tail, at = self.tail + data, "", at - len(self.tail)
        last = data.rfind("\x1b", max(0, len(data) - 4096))
        if last == len(data) - 1:  # maybe the first half of an OSC's terminator (ESC \\)
            osc = data.rfind("\x1b]", max(0, len(data) - 4096), last)
            last = osc if osc != -1 and _INCOMPLETE.match(data, osc) else last
        if last != -1 and _INCOMPLETE.match(data, last):
            data, self.tail = data[:last], data[last:]
        screen, pos = self.screen, 0
        for match in _SEQUENCE.finditer(data):
            start, pos = pos, match.end()
            if match.start() > start:
                self._text(data, start, match.start(), at, starts, times)
            if times is not None:  # (a sequence begun in the previous block: its first event)
                screen.now = times[max(0, bisect_right(starts, at + pos - 1) - 1)]
            private, params, intermediate, final, osc, escape, control = match.groups()
            if control is not None:
                if name := _CONTROLS.get(control):
                    getattr(screen, name)()
            elif final is not None:
                if intermediate or private in (">", "=", "<") or final == "m" or ":" in params:
                    continue
                args = [min(int(p or 0), 9999) for p in params.split(";")]
                if private == "?":
                    if final in "hl":
                        (screen.set_mode if final == "h" else screen.reset_mode)(*args, private=True)
                    elif final in "JK":
                        getattr(screen, _CSI[final])(*args, private=True)
                elif name := _CSI.get(final):
                    getattr(screen, name)(*args)
            elif osc is not None:
                if osc.startswith("133;") and len(osc) > 4:
                    screen.mark(osc[4])
            elif name := pyte.Stream.escape.get(escape):
                getattr(screen, name)()
            elif escape == "#8":
                screen.alignment_display()
        if pos < len(data):
            self._text(data, pos, len(data), at, starts, times)

    def _text(self, data: str, start: int, end: int, at: int, starts, times):
        screen = self.screen
        if times is not None:
            first, last = max(0, bisect_right(starts, at + start) - 1), max(0, bisect_right(starts, at + end - 1) - 1)
            while first < last:  # across events: each part at its own time
                cut = starts[first + 1] - at
                screen.now = times[first]
                screen.draw(data[start:cut].replace("\x1b", ""))
                start, first = cut, first + 1
            screen.now = times[last]
        screen.draw(data[start:end].replace("\x1b", ""))


# --- the fast path ---------------------------------------------------------------------------------------

# Sequences that change nothing in the screen's text: colours; cursor keys, blinking, visibility, mouse,
# focus, meta key, bracketed paste and synchronised output modes; OSC other than 133 (titles, the working
# directory, hyperlinks); charsets (pyte ignores them in UTF-8) and keypad modes; status and attribute
# queries, window operations, the cursor's style; the bell.
_HARMLESS = re.compile(
    r"\x1b\[[0-9;:]*m"
    r"|\x1b\[\?(?:1|12|25|100[0-6]|1015|1034|2004|2026)[hl]"
    r"|\x1b\](?!133;)[^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()][0-9A-Za-z]|\x1b[=>]"
    r"|\x1b\[[0-9;]*[nct]|\x1b\[>[0-9;]*[cm]|\x1b\[[0-9]* q"
    r"|\x07"
)
# What the fast path looks at in a line: escape sequences and controls (the rest is text).
_FAST_TOKEN = re.compile(
    r"\x1b\[[0-9;:?>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>]|\x1b|[\x00-\x1f\x7f]")
_LEAVE_ALTERNATE = re.compile(r"\x1b\[\?(?:1049|1047|47)l")
_LINE_CSI = re.compile(r"\x1b\[([0-9]{0,4})([KCDGPX@])")  # within the cursor's row: erase, move, delete, insert
_HOME = re.compile(r"\x1b\[(?:1?;?1?)?H")
_ERASE_DISPLAY = re.compile(r"\x1b\[[0-3]?J")
# The end of a line after its last visible character (sequences, carriage returns, bells), read backwards.
_TRAILING = re.compile(r"(?:[@-~][ -/]*[0-9;:?>]*\[\x1b|(?:\x07|\\\x1b)[^\x07\x1b]*\]\x1b|[0-9A-Za-z][()]\x1b|[=>]\x1b|[\r\x07])*")


def _last_drawn(raw: str) -> int:
    """Where the last character drawn by a line of output is: before what _TRAILING matches."""
    tail = raw[:-257:-1]
    skipped = _TRAILING.match(tail).end()
    if skipped == len(tail) and len(raw) > len(tail):
        skipped = _TRAILING.match(raw[::-1]).end()
    return len(raw) - skipped - 1


class _Reject(Exception):
    """The line needs a real screen."""


class Terminal:
    """Turns a session's output into its transcript (`out.lines`).

    `feed` runs of output events, `resize` between them, then `close()`. The fast path holds the current
    line as screen cells with the cursor in it, and the lines above it that are still on the screen
    (`pending`): a program that moves the cursor up may change those yet, so they go to the transcript when
    they scroll off, or when the screen is cleared.
    """

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.out = _Lines()
        # (text, time, prompt_end, rows, cells) of the lines above the current one, the last of them on the screen;
        # cells only where they are not the text's characters one by one (wide characters)
        self.pending: deque = deque()
        self.top = 0  # the screen row where the current line starts
        self.cells: list[str] = []  # the current line
        self.x = 0  # the cursor: a cell of the current line
        self.rowstart = 0  # the cell where the cursor's row starts (a line wraps every `cols` cells)
        self.time: float | None = None  # when the current line was last drawn
        self.prompt: int | None = None  # the cell where its prompt ended (OSC 133 B)
        self.screen: _Screen | None = None  # on the slow path
        self.parser: _Parser | None = None
        self.savepoints: list = []  # saved cursors (ESC 7), kept across the paths
        self.cleared = None  # what a clear in the line being read changed
        self.slow_lines = 0  # lines that went to pyte

    def feed(self, texts: list[str], times: list[float] | None):
        """Output events with no resize between them, and their times (None: a log without timing)."""
        text = "".join(texts)
        starts = list(accumulate(map(len, texts[:-1]), initial=0)) if times is not None else None
        parts = text.split("\n")
        last = len(parts) - 1
        pos, i = 0, 0
        while i <= last:
            raw = parts[i]
            newline = i != last
            end = pos + len(raw)
            if self.screen is not None and self.screen.normal is not None:
                # a full-screen program: to the end of the line where it leaves the alternate screen, in one go
                leaves = _LEAVE_ALTERNATE.search(text, pos)
                stop = -1 if leaves is None else text.find("\n", leaves.end())
                stop = len(text) if stop == -1 else stop + 1
                self._slow(text[pos:stop], pos, starts, times)
                if stop == len(text):
                    break
                i, pos = i + text.count("\n", pos, stop), stop
                continue
            if self.screen is not None and not self._leave_slow(raw):
                self._slow(raw + "\n" if newline else raw, pos, starts, times)
            else:
                clean = _HARMLESS.sub("", raw) if ("\x1b" in raw or "\x07" in raw) else raw
                body = clean[:-1] if clean.endswith("\r") else clean
                line = None
                if not newline or self.x or self.cells:
                    pass
                elif "\r" not in body:
                    if _narrow(body):  # the usual line: text from the left margin, maybe coloured, and a line feed
                        line = final = body
                else:  # redrawn in place, a progress bar: each part drawn over the line from its start
                    drawn_over = body.split("\r")
                    if _narrow(body.replace("\r", "")) and max(map(len, drawn_over)) <= self.cols:
                        line, final = "", drawn_over[-1]
                        for part in drawn_over:
                            line = part + line[len(part):]
                if line is not None:
                    time = None
                    if line and times is not None:  # of the event that drew the line's last character
                        drawn = pos + (len(raw.rstrip("\r")) - 1 if clean is raw else _last_drawn(raw))
                        time = times[bisect_right(starts, drawn) - 1]
                    self._push(line, time, None)
                    if final and body is clean:  # no carriage return: the next line starts in this column
                        self.x = (len(final) - 1) % self.cols + 1
                else:
                    try:
                        self._fast_line(raw, pos, newline, starts, times)
                    except _Reject:
                        self._enter_slow()
                        self._slow(raw + "\n" if newline else raw, pos, starts, times)
            pos, i = end + 1, i + 1

    def resize(self, cols: int, rows: int):
        narrow = min(cols, self.cols)
        # Rows keep what they hold (no reflow): lines wrapped at the old width need a real screen.
        wrapped = cols != self.cols and any(line[3] > 1 for line in islice(reversed(self.pending), self.rows))
        if self.screen is None and len(self.cells) < narrow and self.x < narrow and not wrapped:
            self.cols, self.rows = cols, rows
            self.top = min(self.top, rows - 1)
            return
        if self.screen is None:
            self._enter_slow()
        self.screen.resize(rows, cols)
        self.cols, self.rows = cols, rows

    def close(self) -> list[TranscriptLine]:
        """The rest of the transcript: what is still on the screen."""
        if self.screen is not None:  # an escape sequence cut short at the end is dropped, as pyte does
            if self.screen.normal is not None:
                self.screen.reset_mode(1049, private=True)
            self.screen.emit_all()
            self.screen = self.parser = None
        else:
            self._flush(0)
            self.out.add("".join(self.cells), self.time, self._prompt_index())
        self.cells = []
        return self.out.lines

    # -- the fast path
    def _prompt_index(self) -> int | None:
        return None if self.prompt is None else len("".join(self.cells[:self.prompt]))

    def _flush(self, keep: int):
        """To the transcript: the pending lines but the last `keep`, which may still be on the screen."""
        pending = self.pending
        self.out.add_all([pending.popleft() for _ in range(len(pending) - keep)])

    def _push(self, text: str, time, prompt, rows: int = 0, cells: list | None = None):
        """A line feed ends the current line; it stays on the screen above the next until it scrolls off. It
        takes `rows` rows (0: as many as its characters, each one cell wide, need)."""
        rows = rows or (1 if len(text) <= self.cols else -(-len(text) // self.cols))
        self.pending.append((text, time, prompt, rows, cells))
        self.top = min(self.top + rows, self.rows - 1)
        if len(self.pending) > 2 * self.rows + 64:  # those before the last `rows` lines have scrolled off
            self._flush(self.rows)

    def _blank(self) -> bool:
        return not self.pending and not self.top and not self.rowstart and not "".join(self.cells).strip()

    def _fast_line(self, raw: str, pos: int, newline: bool, starts, times):
        """A line with carriage returns, backspaces, tabs, erasing, clearing; raises _Reject, having changed
        nothing, if it needs a real screen."""
        saved = (self.cells[:], self.x, self.rowstart, self.time, self.prompt)
        self.cleared = None
        try:
            self._fast_tokens(raw, pos, starts, times)
        except _Reject:
            self.cells, self.x, self.rowstart, self.time, self.prompt = saved
            if self.cleared is not None:
                self.pending, self.top, emitted, self.out.last = self.cleared
                del self.out.lines[emitted:]
            raise
        if newline:
            text = "".join(self.cells)
            self._push(text.rstrip(" "), self.time, self._prompt_index(), self.rowstart // self.cols + 1,
                       self.cells if len(text) != len(self.cells) else None)
            self.x -= self.rowstart  # a line feed keeps the column
            self.cells, self.rowstart, self.time, self.prompt = [], 0, None, None

    def _fast_tokens(self, raw: str, pos: int, starts, times):
        at = 0
        for match in _FAST_TOKEN.finditer(raw):
            start, token = match.start(), match.group()
            if start < at:  # taken with the previous token (a clear's second half)
                continue
            if start > at:
                self._draw(raw[at:start], pos + at, starts, times)
            at = match.end()
            if len(token) == 1:
                self._control(token)
            elif token[1] == "]":
                if token.startswith("\x1b]133;B"):
                    self.prompt = self.x
                    self.out.marked = True
            elif _HARMLESS.fullmatch(token):
                continue
            elif (csi := _LINE_CSI.fullmatch(token)) is not None:
                self._csi(int(csi.group(1) or 0), csi.group(2))
            elif _HOME.fullmatch(token) or _ERASE_DISPLAY.fullmatch(token):
                # ESC[H ESC[2J (clear, Ctrl-L), either way round: everything leaves the screen
                if token[-1] == "H":  # then erase all, below or everything
                    pair = _ERASE_DISPLAY.match(raw, at)
                    clears = pair is not None and pair.group()[-2] in "[023"
                else:  # erase everything, then home
                    pair = _HOME.match(raw, at)
                    clears = pair is not None and token[-2] in "23"
                if clears:
                    at = pair.end()
                    self._clear()
                elif self._blank():  # nothing on the screen: only the cursor may move
                    if token[-1] == "H":
                        self.x = 0
                else:
                    raise _Reject
            else:
                raise _Reject
        if at < len(raw):
            self._draw(raw[at:], pos + at, starts, times)

    def _clear(self):
        if self.cleared is None:  # for _fast_line to undo
            self.cleared = (self.pending.copy(), self.top, len(self.out.lines), self.out.last)
        self._flush(0)
        self.out.add("".join(self.cells), self.time, self._prompt_index())
        self.cells, self.x, self.rowstart, self.top, self.time, self.prompt = [], 0, 0, 0, None, None

    def _control(self, char: str):
        x, rowstart, cols = self.x, self.rowstart, self.cols
        if char == "\r":
            self.x = rowstart
        elif char == "\b":  # pyte: from the wrap position back two cells, as xterm
            self.x = max(rowstart, x - (2 if x == rowstart + cols else 1))
        elif char == "\t":
            stop = ((x - rowstart) // 8 + 1) * 8
            self.x = rowstart + (stop if stop < cols else cols - 1)
        elif char in "\x0b\x0c\x1b":  # line feeds, a stray escape
            raise _Reject
        # the other controls draw nothing

    def _csi(self, n: int, final: str):
        cells, x, rowstart = self.cells, self.x, self.rowstart
        end = rowstart + self.cols
        if final == "K":  # erase in line: to its end, from its start, all of it
            if n == 0:
                del cells[x:]
            elif n in (1, 2):
                stop = min(len(cells), x + 1 if n == 1 else end)
                cells[rowstart:stop] = " " * max(0, stop - rowstart)
            else:
                raise _Reject
        elif final == "C":
            self.x = min(x + (n or 1), end - 1)
        elif final == "D":
            self.x = max(rowstart, x - (x == end) - (n or 1))
        elif final == "G":
            self.x = rowstart + min(max(n, 1), self.cols) - 1
        elif final == "X":  # erase characters
            stop = min(len(cells), x + (n or 1), end)
            cells[x:stop] = " " * max(0, stop - x)
        elif final == "P":  # delete characters
            del cells[x:x + (n or 1)]
        elif x < len(cells):  # "@": insert blanks
            if len(cells) + (n or 1) >= end:
                raise _Reject  # pyte keeps what is pushed past the margin in a hidden cell
            cells[x:x] = " " * (n or 1)

    def _draw(self, text: str, pos: int, starts, times):
        """Draws text that starts at `pos` in the output; the line's time becomes that of its last character drawn."""
        cells, cols = self.cells, self.cols
        if _narrow(text):
            x = self.x
            if x == self.rowstart + cols:
                self.rowstart += cols
            if x > len(cells):
                cells.extend(" " * (x - len(cells)))
            stop = x + len(text)
            cells[x:stop] = text
            self.x = stop
            self.rowstart += (stop - 1 - self.rowstart) // cols * cols
            drawn = len(text) - 1
        else:
            drawn = max((i for i, char in enumerate(text) if self._draw_char(char)), default=None)
            if drawn is None:
                return
        if times is not None:
            self.time = times[bisect_right(starts, pos + drawn) - 1]

    def _draw_char(self, char: str) -> bool:
        width = wcwidth(char)
        cells = self.cells
        combining = width == 0 and unicodedata.combining(char)
        if width <= 0 and not combining:
            return False  # not drawn (see _drawable)
        if self.x == self.rowstart + self.cols:
            if combining:  # pyte wraps first, to an empty row that the line then takes on the screen
                raise _Reject
            self.rowstart += self.cols
        x = self.x
        if combining:  # joins the character before it, on this row or at the end of the one above
            if x == 0 or x > len(cells) or cells[x - 1] == "":
                raise _Reject
            cells[x - 1] = unicodedata.normalize("NFC", cells[x - 1] + char)
            return True
        if width == 2 and x - self.rowstart == self.cols - 1:
            raise _Reject  # pyte puts it in the last column, where a real terminal wraps it
        if x > len(cells):
            cells.extend(" " * (x - len(cells)))
        cells[x:x + width] = (char, "") if width == 2 else (char,)
        self.x = x + width
        return True

    # -- between the paths
    def _enter_slow(self):
        """The fast path's screen (pending lines, the current line, the cursor) onto a pyte screen."""
        cols, rows = self.cols, self.rows
        screen = self.screen = _Screen(cols, rows, self.out)
        self.parser = _Parser(screen)
        screen.savepoints = self.savepoints
        first = max(0, min(self.top, rows - (self.rowstart // cols + 1)))
        placed, y, carry = [], first, ""
        while self.pending and y > 0:
            text, time, prompt, height, cells = self.pending.pop()
            if cells is None:
                cells = list(text)
            elif prompt is not None:  # a text index: the cell it is in
                prompt = next(i for i in range(len(cells) + 1) if len("".join(cells[:i])) >= prompt)
            if height > y:  # only its last rows are still on the screen
                skip = height - y
                carry = "".join(cells[:skip * cols]) + " " * max(0, skip * cols - len(cells))
                cells, height, prompt = cells[skip * cols:], y, None
            y -= height
            placed.append((y, cells, height, time, prompt))
        self._flush(0)  # no room for those: they scrolled off
        screen.carry = carry
        height = self.rowstart // cols + 1
        skip = max(0, height - rows)  # the current line is taller than the screen: its first rows scrolled off
        if skip:
            screen.carry = "".join(self.cells[:skip * cols]) + " " * max(0, skip * cols - len(self.cells))
        placed.append((first - skip, self.cells, height, self.time, self.prompt))
        for y, cells, height, time, prompt in placed:
            for k in range(height):
                if y + k < 0:
                    continue
                row = screen.buffer[y + k]
                for i, data in enumerate(cells[k * cols:(k + 1) * cols]):
                    if data != " ":
                        row[i] = _CHARS[data]
                at = prompt - k * cols if prompt is not None and k * cols <= prompt < (k + 1) * cols else None
                screen.meta[y + k] = [time, at, cols if k + 1 < height else 0, False]
        screen.cursor.y = min(first + self.rowstart // cols, rows - 1)
        screen.cursor.x = self.x - self.rowstart
        self.cells, self.x, self.rowstart, self.time, self.prompt = [], 0, 0, None, None

    def _leave_slow(self, raw: str) -> bool:
        """Back to the fast path before this line, if the screen holds plain lines and this line looks plain."""
        screen = self.screen
        if screen.normal is not None or self.parser.tail or "\x1b" in _HARMLESS.sub("", raw).replace("\x1b]133;", "") or not screen.plain():
            return False
        cols, y = self.cols, screen.cursor.y
        if screen.meta[y][_WRAPPED]:  # its line goes on in the row below
            return False
        first = y
        while first and screen.meta[first - 1][_WRAPPED]:
            first -= 1
            if screen.meta[first][_WRAPPED] != cols:  # wrapped before a resize: not cells of `cols` rows
                return False
        if any(0 < m[_WRAPPED] != cols for m in screen.meta[:first]):  # lines wrapped before a resize
            return False
        start = 0
        for row_y in range(first):
            if row_y == first - 1 or not screen.meta[row_y][_WRAPPED]:
                meta = screen.meta[start:row_y + 1]
                text, prompt, cells = "", None, None
                if not all(m[_TAKEN] for m in meta):  # else in the transcript already: it only takes room
                    text, prompt = screen.line(start, row_y)
                    cells = [c for y in range(start, row_y + 1) for c in screen.row_cells(y, cols if y < row_y else 0)]
                    cells = cells if len(cells) != len(text) else None
                times = [m[_TIME] for m in meta if m[_TIME] is not None]
                self.pending.append((text.rstrip(" "), max(times, default=None), prompt, row_y - start + 1, cells))
                start = row_y + 1
        self.top = first
        cells = []
        for row_y in range(first, y + 1):
            cells += screen.row_cells(row_y, screen.meta[row_y][_WRAPPED] if row_y < y else 0)
        while cells and cells[-1] == " ":
            cells.pop()
        self.cells = cells
        self.rowstart = (y - first) * cols
        self.x = self.rowstart + screen.cursor.x
        meta = screen.meta[first:y + 1]
        self.time = max((m[_TIME] for m in meta if m[_TIME] is not None), default=None)
        marks = [k * cols + m[_PROMPT_AT] for k, m in enumerate(meta) if m[_PROMPT_AT] is not None]
        self.prompt = marks[-1] if marks else None
        self.savepoints = screen.savepoints
        self.screen = self.parser = None
        return True

    def _slow(self, chunk: str, pos: int, starts, times):
        self.slow_lines += chunk.count("\n") or 1
        self.parser.feed(chunk, pos, starts, times)


# --- reading the logs ------------------------------------------------------------------------------------

def _blocks(source) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    while block := source.read(READ_SIZE):
        yield block


def _size(value, default: int, limit: int) -> int:
    return value if type(value) is int and 0 < value <= limit else default


class _Asciicast:
    """Reads an asciicast v2 recording into a Terminal, as far as it can, noting what it could not read."""

    def __init__(self, transcript: Transcript):
        self.transcript = transcript
        self.terminal: Terminal | None = None
        self.number = 0  # line number of the last line read (1: the header)
        self.last_time = 0.0
        self.bad: list[int] = []
        self.bad_count = 0
        self.replaced = 0

    def read(self, source) -> Iterator[Terminal]:
        rest = b""
        for block in _blocks(source):
            self.transcript.bytes += len(block)
            data = rest + block
            cut = data.rfind(b"\n") + 1
            self.lines(data[:cut].split(b"\n")[:-1])
            rest = data[cut:]
            if self.terminal is not None:
                yield self.terminal
        if rest.strip():
            self.lines([rest], last=True)
        if self.terminal is None:
            self.transcript.flag("an empty recording")
            self.terminal = Terminal(*DEFAULT_SIZE)
        if self.bad_count:
            more = f" and {self.bad_count - len(self.bad)} more" if self.bad_count > len(self.bad) else ""
            self.transcript.flag(f"{self.bad_count} unreadable line(s) skipped: line {', '.join(map(str, sorted(self.bad)))}{more}")
        if self.replaced:
            self.transcript.flag(f"invalid UTF-8 in {self.replaced} line(s), replaced with U+FFFD")
        yield self.terminal

    def lines(self, lines: list[bytes], last: bool = False):
        if self.terminal is None and lines:
            self.number = 1
            if not self.header(lines[0]):
                self.number = 0
            else:
                lines = lines[1:]
        numbers = range(self.number + 1, self.number + 1 + len(lines))
        self.number += len(lines)
        if b"" in lines:  # blank lines: skipped
            kept = [(n, line) for n, line in zip(numbers, lines, strict=True) if line]
            numbers, lines = [n for n, _ in kept], [line for _, line in kept]
        try:  # all at once, as one JSON array: the usual case, and much faster than line by line
            events = orjson.loads(b"[" + b",".join(lines) + b"]")
            if len(events) != len(lines):
                raise ValueError
        except ValueError:
            events = [self.event(line) for line in lines]
        texts: list[str] = []
        times: list[float] = []
        terminal, last_time = self.terminal, self.last_time
        for i, event in enumerate(events):
            if type(event) is list and len(event) >= 3 and type(event[0]) in (int, float) and event[0] >= 0:
                time, code, text = event[0], event[1], event[2]
                if type(text) is str and code == "o":
                    time = last_time = time if time > last_time else last_time
                    texts.append(text)
                    times.append(time)
                    continue
                if type(text) is str and code == "r":
                    cols, _, rows = text.partition("x")
                    if cols.isdigit() and rows.isdigit() and 0 < int(cols) <= MAX_SIZE[0] and 0 < int(rows) <= MAX_SIZE[1]:
                        if texts:
                            terminal.feed(texts, times)
                            texts, times = [], []
                        terminal.resize(int(cols), int(rows))
                        continue
                elif type(code) is str and type(text) is str:
                    continue  # another kind of event (input, marker): not shown on the screen
            if last and i == len(events) - 1:
                self.transcript.flag(f"the last line (line {numbers[i]}) is truncated")
            else:
                self.skip(numbers[i])
        self.last_time = last_time
        if texts:
            terminal.feed(texts, times)

    def header(self, line: bytes) -> bool:
        """Reads the header; False if the line is an event instead (a recording without its header)."""
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError:
            header = None
        if isinstance(header, dict) and header.get("version") == 2:
            width, height = header.get("width"), header.get("height")
            self.terminal = Terminal(_size(width, DEFAULT_SIZE[0], MAX_SIZE[0]), _size(height, DEFAULT_SIZE[1], MAX_SIZE[1]))
            if (self.terminal.cols, self.terminal.rows) != (width, height):
                self.transcript.flag(f"invalid terminal size in the header: read as {self.terminal.cols}x{self.terminal.rows}")
            return True
        self.terminal = Terminal(*DEFAULT_SIZE)
        if isinstance(header, list):
            self.transcript.flag("no asciicast v2 header: read as 80x24")
            return False
        self.transcript.flag("the first line is not an asciicast v2 header: the rest read as 80x24")
        return True

    def event(self, line: bytes):
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        try:  # invalid UTF-8 in a line that is otherwise fine
            event = orjson.loads(line.decode(errors="replace"))
        except orjson.JSONDecodeError:
            return None
        self.replaced += 1
        return event

    def skip(self, number: int):
        self.bad_count += 1
        if len(self.bad) < 5:
            self.bad.append(number)


_SCRIPT_HEADER = re.compile(r"Script started on [^\n]*\n")
_SCRIPT_SIZE = re.compile(r'COLUMNS="(\d+)" LINES="(\d+)"')
_SCRIPT_FOOTER = re.compile(r"(?:\r?\n)?Script done on [^\n]*\n?\Z")


def _ssm(source, transcript: Transcript) -> Iterator[Terminal]:
    """An SSM agent's S3 log: what `script` wrote, the session's raw output between its header and footer."""
    data = b"".join(_blocks(source))
    transcript.bytes = len(data)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        transcript.flag(f"invalid UTF-8 (first at byte {exc.start}), replaced with U+FFFD")
        text = data.decode(errors="replace")
    cols, rows = SSM_DEFAULT_SIZE
    header = _SCRIPT_HEADER.match(text)
    if header:
        if size := _SCRIPT_SIZE.search(header.group()):
            cols, rows = _size(int(size.group(1)), cols, MAX_SIZE[0]), _size(int(size.group(2)), rows, MAX_SIZE[1])
        text = text[header.end():]
    footer = _SCRIPT_FOOTER.search(text, max(0, len(text) - 1024))
    if footer:
        text = text[:footer.start()]
    elif header:
        transcript.flag("no 'Script done' line at the end: the log may be truncated")
    terminal = Terminal(cols, rows)
    for start in range(0, len(text), READ_SIZE):
        terminal.feed([text[start:start + READ_SIZE]], None)
        yield terminal


def stream(source, log_kind: str, transcript: Transcript) -> Iterator[list[TranscriptLine]]:
    """The transcript's lines, a batch at a time as the recording (bytes or a binary file) is read; bad
    input never raises: `transcript` says how far it got (complete, notes) and counts the bytes."""
    if log_kind not in LOG_KINDS:
        raise ValueError(f"Unknown log kind {log_kind!r}")
    terminals: Iterable[Terminal] = _ssm(source, transcript) if log_kind == SSM_S3 else _Asciicast(transcript).read(source)
    terminal = None
    for terminal in terminals:
        if terminal.out.lines:
            lines, terminal.out.lines = terminal.out.lines, []
            yield lines
    if terminal is not None:
        yield terminal.close()


def transcribe(source, log_kind: str) -> Transcript:
    """The whole transcript of a recording at once (see `stream`)."""
    transcript = Transcript()
    for lines in stream(source, log_kind, transcript):
        transcript.lines += lines
    return transcript
