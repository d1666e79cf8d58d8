from django.urls import path

from jobs import composer, views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("submit/", composer.submit, name="submit"),
    path("submit/templates/", composer.save_template, name="save_template"),
    path("submit/templates/<int:pk>/delete/", composer.delete_template, name="delete_template"),
    path("<str:job_id>/", views.job_detail, name="detail"),
    path("<str:job_id>/cancel/", views.job_cancel, name="cancel"),
    path("<str:job_id>/save-template/", composer.save_job_template, name="save_job_template"),
]
