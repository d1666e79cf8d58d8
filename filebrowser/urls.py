from django.urls import path

from filebrowser import views

app_name = "filebrowser"
urlpatterns = [
    path("", views.browse, name="browse"),  # every page takes ?path=/absolute/path
    path("view/", views.view_file, name="view"),
    path("download/", views.download, name="download"),
    path("upload/", views.upload, name="upload"),
    path("mkdir/", views.mkdir, name="mkdir"),
    path("edit/", views.edit, name="edit"),
]
