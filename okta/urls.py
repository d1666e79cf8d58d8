"""/hooks/okta/<tenant_slug>/: the tenant's Okta event hook (okta/hooks.py), registered in Okta with its secret."""

from django.urls import path

from okta import hooks

app_name = "okta"
urlpatterns = [
    path("<slug:tenant_slug>/", hooks.event_hook, name="event_hook"),
]
