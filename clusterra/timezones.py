"""Times in the viewer's time zone.

Pages render times with Django's localtime, so the active time zone decides. It is the user's choice on
the preferences page if they made one, else the zone their browser reports: static/js/timezone.js stores
`Intl.DateTimeFormat().resolvedOptions().timeZone` in the `clusterra_tz` cookie (and reloads once the
first time, so even the first page is right). Anything that is not a known IANA zone name is ignored (UTC).
"""

import zoneinfo
from functools import lru_cache

from django.utils import timezone

from clusterra.ops import HybridMiddleware

COOKIE = "clusterra_tz"


@lru_cache(maxsize=1)
def available() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone(name: str | None):
    """The ZoneInfo for an IANA name, or None for anything else (empty, unknown, over-long)."""
    if not name or len(name) > 64 or name not in available():
        return None
    return zoneinfo.ZoneInfo(name)


def choices() -> list[tuple[str, str]]:
    return [("", "As my browser says"), *((name, name.replace("_", " ")) for name in sorted(available()))]


# Machine interfaces answer in UTC ISO times; they need neither the cookie nor the user's row.
_MACHINE_PATHS = ("/v1/", "/scim/", "/hooks/", "/static/", "/.well-known/")


def _activate(request, user) -> None:
    chosen = getattr(user, "time_zone", "") if user is not None and user.is_authenticated else ""
    tz = zone(chosen) or zone(request.COOKIES.get(COOKIE))
    if tz is None:
        timezone.deactivate()
    else:
        timezone.activate(tz)
    request.viewer_time_zone = tz.key if tz else "UTC"


class ViewerTimeZoneMiddleware(HybridMiddleware):
    """After AuthenticationMiddleware: it reads the user (for their chosen zone) on every page, the API excepted;
    pages read the user anyway."""

    def call(self, request):
        if not request.path.startswith(_MACHINE_PATHS):
            _activate(request, getattr(request, "user", None))
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()  # the zone is per request: nothing after it (another request, a test) inherits it

    async def acall(self, request):
        if not request.path.startswith(_MACHINE_PATHS):
            user = await request.auser() if hasattr(request, "auser") else None
            if user is not None:
                request._cached_user = user  # what request.user reads in the (sync) view: no second query
            _activate(request, user)
        try:
            return await self.get_response(request)
        finally:
            timezone.deactivate()
