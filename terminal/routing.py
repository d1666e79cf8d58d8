from django.urls import path

from terminal.consumers import TerminalConsumer

websocket_urlpatterns = [
    path("ws/t/<slug:tenant_slug>/c/<slug:cluster_slug>/terminal/", TerminalConsumer.as_asgi()),
    # The same, with the worker id of the process that holds the session: the proxy routes a reattach by it
    # (docs/deployment.md, "Reattach routing"). The consumer ignores the segment; the live session decides.
    path("ws/w/<slug:worker>/t/<slug:tenant_slug>/c/<slug:cluster_slug>/terminal/", TerminalConsumer.as_asgi()),
]
