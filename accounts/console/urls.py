"""/t/<tenant_slug>/admin/…: the tenant admin console (accounts/console)."""

from django.urls import path

from accounts.console import configuration, people, review
from audit import views as audit_views
from okta import console as okta
from scim import console as scim_console

app_name = "console"
urlpatterns = [
    path("", people.people, name="people"),
    path("people/add/", people.add_person, name="person_add"),
    path("people/<int:user_id>/", people.person, name="person"),
    path("people/<int:user_id>/suspend/", people.change_status, {"action": "suspend"}, name="person_suspend"),
    path("people/<int:user_id>/offboard/", people.change_status, {"action": "offboard"}, name="person_offboard"),
    path("people/<int:user_id>/reinstate/", people.change_status, {"action": "reinstate"}, name="person_reinstate"),
    path("people/<int:user_id>/unlock/", people.unlock_sign_in, name="person_unlock"),
    path("people/<int:user_id>/role/", people.change_role, name="person_role"),
    path("people/<int:user_id>/accounts/<int:account_id>/retry/", people.retry_account, name="account_retry"),
    path("people/<int:user_id>/sessions/<uuid:session_id>/end/", people.end_session, name="session_end"),
    path("people/<int:user_id>/tokens/<int:token_id>/revoke/", people.revoke_token, name="token_revoke"),
    path("clusters/", configuration.clusters, name="clusters"),
    path("clusters/add/", configuration.cluster_edit, name="cluster_add"),
    path("clusters/<slug:cluster_slug>/edit/", configuration.cluster_edit, name="cluster_edit"),
    path("access/", configuration.access_rules, name="access_rules"),
    path("access/add/", configuration.access_rule_edit, name="access_rule_add"),
    path("access/<int:rule_id>/", configuration.access_rule_edit, name="access_rule_edit"),
    path("access/<int:rule_id>/delete/", configuration.access_rule_delete, name="access_rule_delete"),
    path("identity/", configuration.identity, name="identity"),
    path("identity/provider/", configuration.identity_provider_save, name="identity_provider_save"),
    path("identity/policy/", configuration.tenant_policy_save, name="tenant_policy_save"),
    path("identity/test/", configuration.identity_provider_test, name="identity_provider_test"),
    path("okta/", okta.okta, name="okta"),
    path("okta/save/", okta.okta_save, name="okta_save"),
    path("okta/hook-secret/", okta.okta_hook_secret, name="okta_hook_secret"),
    path("okta/run/", okta.okta_run, name="okta_run"),
    path("okta/runs/<int:run_id>/", okta.okta_run_detail, name="okta_run_detail"),
    path("provisioning/", scim_console.provisioning, name="provisioning"),
    path("provisioning/tokens/<int:token_id>/revoke/", scim_console.revoke_token, name="scim_token_revoke"),
    path("preview/", review.preview, name="preview"),
    # Activity: search in every session of the tenant; its events, and their export (audit/views.py).
    path("activity/", audit_views.activity, name="activity"),
    path("activity/events/", audit_views.activity_events, name="activity_events"),
    path("activity/events/export.jsonl", audit_views.export_events, {"export_format": "jsonl"}, name="activity_export_jsonl"),
    path("activity/events/export.csv", audit_views.export_events, {"export_format": "csv"}, name="activity_export_csv"),
]
