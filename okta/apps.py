from django.apps import AppConfig


class OktaConfig(AppConfig):
    name = "okta"
    verbose_name = "Okta reconciliation and event hooks"
