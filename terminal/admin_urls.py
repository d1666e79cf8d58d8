from django.urls import path

from terminal import views

app_name = "terminal_admin"
urlpatterns = [
    path("", views.live_sessions, name="live"),
    path("<uuid:session_id>/terminate/", views.terminate_session, name="terminate"),
]
