import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("clusters", "0004_provisioning"),
    ]

    operations = [
        migrations.CreateModel(
            name="AccountUsage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("associations", models.JSONField(blank=True, default=list)),
                ("storage", models.JSONField(blank=True, default=list)),
                ("collected_at", models.DateTimeField(blank=True, help_text="The last attempt at which something was collected.", null=True)),
                ("attempted_at", models.DateTimeField(blank=True, null=True)),
                ("error", models.TextField(blank=True, help_text="What failed at the last attempt; empty when everything worked.")),
                ("account", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="usage", to="clusters.clusteraccount")),
            ],
        ),
    ]
