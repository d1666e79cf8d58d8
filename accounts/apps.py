from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and tenants"

    def ready(self):
        from accounts import signals  # noqa: F401  (sign-in log lines)
