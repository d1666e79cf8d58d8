"""The job lists' order as indexes (jobs.queries.NEWEST_FIRST), and the signal that ended a job.

`ORDER BY submit_time DESC NULLS LAST, id DESC` is served by an index only if the index has the same
order, id included: the tasks of one array share a submit time, and without the id SQLite and PostgreSQL
sorted all of them for every page (the My jobs page went from 23 to 35 ms p95 between 1k and 10k jobs).
SQLite cannot declare NULLS LAST in an index (its DESC already sorts NULLs last); PostgreSQL needs it.
"""

from django.db import migrations, models

INDEXES = {
    "job_owner_newest": "cluster_id, owner_id, submit_time DESC{nulls}, id DESC",
    "job_cluster_newest": "cluster_id, submit_time DESC{nulls}, id DESC",
}


def create_indexes(apps, schema_editor):
    nulls = " NULLS LAST" if schema_editor.connection.vendor == "postgresql" else ""
    for name, columns in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX {name} ON jobs_job ({columns.format(nulls=nulls)})")


def drop_indexes(apps, schema_editor):
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX {name}")


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0004_job_templates"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="job", name="job_owner_recent"),
        migrations.RemoveIndex(model_name="job", name="job_cluster_recent"),
        migrations.RunPython(create_indexes, drop_indexes),
        migrations.AddField(
            model_name="job",
            name="exit_signal",
            field=models.IntegerField(blank=True, null=True, help_text="The signal that ended the job (Slurm's ExitCode=code:signal), if any."),
        ),
    ]
