from django.urls import path

from terminal.consumers import TerminalConsumer

websocket_urlpatterns = [
    path("ws/t/<slug:tenant_slug>/c/<slug:cluster_slug>/terminal/", TerminalConsumer.as_asgi()),
]
