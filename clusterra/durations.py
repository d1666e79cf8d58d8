"""Durations as people read them: Slurm's own format (`2:00:00`, `2-00:00:00`) or plain words.

Pages never show raw seconds. Slurm's format is for values Slurm owns (time limits, elapsed time);
words are for the portal's own limits and countdowns ("20 minutes", "1 hour 30 minutes").
"""

_WORD_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def slurm_duration(seconds) -> str:
    """Seconds as Slurm writes a duration: `M:SS`, `H:MM:SS` or `D-HH:MM:SS`; None is UNLIMITED."""
    if seconds is None or seconds == "":
        return "UNLIMITED"
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def duration_words(seconds, *, units: int = 2) -> str:
    """`1 day 2 hours`, `20 minutes`, `45 seconds`: the `units` largest non-zero units, smaller ones dropped
    (a 12-hour limit and a 61-second countdown read naturally; nobody needs seconds of a day-long limit)."""
    if seconds is None or seconds == "":
        return "no limit"
    if isinstance(seconds, float) and 0 < seconds < 60 and not seconds.is_integer():
        return f"{seconds:.3g} seconds"  # a short timeout such as 0.5 s, or a measured 1.23 s
    remaining = max(0, int(seconds))
    parts = []
    for name, size in _WORD_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
        elif parts:
            break  # `1 day 5 seconds` would read as noise: stop at the first gap after the largest unit
        if len(parts) == units:
            break
    return " ".join(parts) or "0 seconds"
