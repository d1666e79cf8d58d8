"""Print the PostgreSQL grants that make the audit trail insert-only for the web processes' role.

    python manage.py audit_grants --role clusterra_web | psql -U <owner> <database>

Run the migrations as the tables' owner and the portal (daphne, Celery) as `--role`: that role can
insert events and seal them (set sequence/prev_hash/hash once; the trigger refuses anything else), but
cannot update or delete an event, truncate the table or switch the trigger off (only an owner can).
"""

import re

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from audit.models import AuditEvent

SEAL_COLUMNS = ["sequence", "prev_hash", "hash", "actor_id"]  # actor_id: ON DELETE SET NULL of a deleted user


def grant_statements(role: str) -> list[str]:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    quoted = connection.ops.quote_name(role)
    columns = ", ".join(connection.ops.quote_name(c) for c in SEAL_COLUMNS)
    return [
        f"GRANT USAGE ON SCHEMA public TO {quoted};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted};",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted};",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {quoted};",
        f"GRANT UPDATE ({columns}) ON {table} TO {quoted};",
    ]


class Command(BaseCommand):
    help = "Print the PostgreSQL grants that keep the web processes' database role from rewriting audit history."

    def add_arguments(self, parser):
        parser.add_argument("--role", required=True, help="the role daphne and Celery connect as")

    def handle(self, *args, role, **options):
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
            raise CommandError("--role must be a PostgreSQL role name: lowercase letters, digits and _.")
        self.stdout.write("\n".join(grant_statements(role)))
