"""/t/<tenant_slug>/audit/…: a person's own sessions and activity, and session playback (audit/views.py)."""

from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("sessions/", views.my_sessions, name="sessions"),
    path("sessions/<uuid:session_id>/", views.playback, name="playback"),
    path("sessions/<uuid:session_id>/recording.cast", views.recording, name="recording"),
    path("sessions/<uuid:session_id>/ssm.log", views.ssm_log, name="ssm_log"),
    path("sessions/<uuid:session_id>/cloudwatch.cast", views.cloudwatch, name="cloudwatch"),
    path("events/", views.my_events, name="events"),
]
