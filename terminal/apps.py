from django.apps import AppConfig


class TerminalConfig(AppConfig):
    name = "terminal"

    def ready(self):
        from terminal import checks  # noqa: F401  (registers start-up checks)
