from django.apps import AppConfig


class FilebrowserConfig(AppConfig):
    """Browse, view, download, upload and edit files on a cluster as the user's POSIX account (docs/files.md)."""

    name = "filebrowser"
