from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0005_tenant_recording_retention_days"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="time_zone",
            field=models.CharField(blank=True, help_text="IANA time zone for times on pages; empty: the one the browser reports.", max_length=64),
        ),
    ]
