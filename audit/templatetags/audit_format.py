"""Template filters of the audit pages: a search hit's line with its matches marked, offsets, durations."""

from django import template
from django.utils.html import format_html, format_html_join

from clusterra.durations import slurm_duration

register = template.Library()

CONTEXT_BEFORE = 60  # characters shown before the first match of a long line
SHOWN = 240  # characters of a long line shown in all


@register.filter
def marked(text: str, spans) -> str:
    """`text` escaped, each (start, end) span in <mark>; a long line cut to a window around its first match."""
    spans = _merged(spans, len(text))
    start, end = 0, len(text)
    if len(text) > SHOWN:
        start = max(0, spans[0][0] - CONTEXT_BEFORE) if spans else 0
        end = min(len(text), start + SHOWN)
    pairs, position = [], start  # (text before a match, the match), each escaped by format_html_join
    for first, last in spans:
        first, last = max(first, start), min(last, end)
        if first >= last:
            continue
        pairs.append((text[position:first], text[first:last]))
        position = last
    return format_html("{}{}{}{}", "…" if start else "", format_html_join("", "{}<mark>{}</mark>", pairs),
                       text[position:end], "…" if end < len(text) else "")


def _merged(spans, length: int) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for first, last in sorted((max(0, a), min(length, b)) for a, b in spans or ()):
        if first >= last:
            continue
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(a, b) for a, b in merged]


@register.filter
def offset(seconds) -> str:
    """A time offset into a session as `+M:SS` or `+H:MM:SS` (empty for an untimed SSM log)."""
    return "" if seconds is None else f"+{slurm_duration(int(seconds))}"


@register.filter
def session_duration(session) -> str:
    """How long a session lasted, as Slurm writes durations; while it runs "live", or "detached, reattachable
    for …" once its tab has closed (TerminalSession.live_state)."""
    if session.ended_at is None:
        return session.live_state
    return slurm_duration(max(0, int((session.ended_at - session.started_at).total_seconds())))
