"""Template filters that show Slurm's values the way Slurm prints them."""

from django import template

register = template.Library()


@register.filter
def slurm_duration(seconds) -> str:
    """Seconds as Slurm writes a duration: `M:SS`, `H:MM:SS` or `D-HH:MM:SS`; None is UNLIMITED."""
    if seconds is None or seconds == "":
        return "UNLIMITED"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"
