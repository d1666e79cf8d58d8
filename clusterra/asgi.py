"""ASGI entry point: HTTP goes to Django, WebSockets to the Channels routes (served by daphne)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clusterra.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from terminal.live import hook_into_daphne  # noqa: E402
from terminal.routing import websocket_urlpatterns  # noqa: E402

# The terminal consumer checks the Origin itself, so a refused socket can be told apart in tests and
# logs; AuthMiddlewareStack gives it the session user.
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)

hook_into_daphne()
