"""The dashboard's "running and queued" jobs of one person, newest first, without walking their history.

A partial index over the rows squeue still lists (`in_queue`), in the lists' order (jobs/0005 says why the
order is declared per database).
"""

from django.db import migrations


def create_index(apps, schema_editor):
    nulls = " NULLS LAST" if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"CREATE INDEX job_owner_queued ON jobs_job (cluster_id, owner_id, submit_time DESC{nulls}, id DESC) "
                          "WHERE in_queue")


def drop_index(apps, schema_editor):
    schema_editor.execute("DROP INDEX job_owner_queued")


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0005_job_list_order"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index),
    ]
