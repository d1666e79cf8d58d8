"""The audit hash chain: sealing, audit_verify on tampered/deleted/reordered events, the append-only
trigger, and concurrent writers in several processes (issue 11 §1)."""

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from audit import chain
from audit.models import AuditChainHead, AuditEvent
from audit.services import record_event
from tests.conftest import BASE_DIR, _database_url

pytestmark = pytest.mark.django_db(transaction=True)
# The append-only trigger (and these tests' way around it) is PostgreSQL's; CI runs on PostgreSQL.
postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (make test uses it)")


def write_events(tenant, count, actor=None):
    for n in range(count):
        record_event("test.event", tenant=tenant, actor=actor, data={"n": n, "note": "ünïcode"},
                     client_address="2001:DB8::1" if n % 2 else "192.0.2.7")


def verify(tenant=None) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("audit_verify", *(["--tenant", tenant.slug] if tenant else []), stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def tamper(sql, params=()):
    """Rewrite history as someone with the table owner's rights would: with the trigger switched off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")


def test_events_are_sealed_per_tenant_in_order(cast):
    acme, other = cast.acme, cast.other
    write_events(acme, 5, cast.alice)
    write_events(other, 3)
    for tenant, count in ((acme, 5), (other, 3)):
        events = list(AuditEvent.objects.filter(tenant=tenant, action="test.event").order_by("sequence"))
        assert len(events) == count
        all_events = list(AuditEvent.objects.filter(tenant=tenant).order_by("sequence"))
        assert [e.sequence for e in all_events] == list(range(1, len(all_events) + 1))
        for before, after in zip(all_events, all_events[1:], strict=False):
            assert after.prev_hash == before.hash
        assert all(e.hash == chain.event_hash(e) for e in all_events)
    assert AuditEvent.objects.filter(sequence__isnull=True).count() == 0
    code, out = verify()
    assert code == 0, out
    assert "acme: intact" in out and "other: intact" in out


def test_an_event_is_sealed_only_when_its_transaction_commits(cast):
    with transaction.atomic():
        event = record_event("test.event", tenant=cast.acme)
        assert AuditEvent.objects.get(pk=event.pk).sequence is None
    assert AuditEvent.objects.get(pk=event.pk).sequence is not None
    with pytest.raises(RuntimeError), transaction.atomic():
        record_event("test.rolled_back", tenant=cast.acme)
        raise RuntimeError("the action failed")
    assert not AuditEvent.objects.filter(action="test.rolled_back").exists()
    assert verify(cast.acme)[0] == 0


def test_a_lost_seal_is_done_by_the_sweep(cast):
    AuditEvent.objects.create(tenant=cast.acme, action="test.unsealed", actor_label="system")  # no seal scheduled
    code, out = verify(cast.acme)
    assert code == 0 and "1 not sealed yet" in out
    from audit.tasks import seal_pending_events

    assert seal_pending_events() == 1
    assert AuditEvent.objects.get(action="test.unsealed").sequence is not None
    code, out = verify(cast.acme)
    assert code == 0 and "not sealed" not in out


@postgres_only
def test_audit_verify_names_an_edited_event(cast):
    write_events(cast.acme, 6)
    target = AuditEvent.objects.filter(tenant=cast.acme, action="test.event").order_by("sequence")[3]
    tamper("UPDATE audit_auditevent SET data = %s WHERE id = %s", ['{"n": 99}', target.pk])
    code, out = verify(cast.acme)
    assert code == 1
    assert f"BROKEN at #{target.sequence} (event id {target.pk})" in out and "was edited" in out
    assert verify(cast.other)[0] == 0  # another tenant's chain is not affected


@postgres_only
def test_audit_verify_names_a_deleted_event(cast):
    write_events(cast.acme, 6)
    target = AuditEvent.objects.filter(tenant=cast.acme, action="test.event").order_by("sequence")[2]
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [target.pk])
    code, out = verify(cast.acme)
    assert code == 1
    assert f"BROKEN at #{target.sequence}" in out and "missing (deleted)" in out


@postgres_only
def test_audit_verify_catches_a_deleted_last_event(cast):
    write_events(cast.acme, 4)
    last = AuditEvent.objects.filter(tenant=cast.acme).order_by("-sequence").first()
    tamper("DELETE FROM audit_auditevent WHERE id = %s", [last.pk])
    code, out = verify(cast.acme)
    assert code == 1 and f"head says #{last.sequence}" in out


@postgres_only
def test_audit_verify_names_reordered_events(cast):
    write_events(cast.acme, 6)
    first, second = AuditEvent.objects.filter(tenant=cast.acme, action="test.event").order_by("sequence")[1:3]
    # Swap the two events' places in the chain (their sequence numbers), as if history were reordered.
    tamper("UPDATE audit_auditevent SET sequence = -1 WHERE id = %s", [first.pk])
    tamper("UPDATE audit_auditevent SET sequence = %s WHERE id = %s", [first.sequence, second.pk])
    tamper("UPDATE audit_auditevent SET sequence = %s WHERE id = %s", [second.sequence, first.pk])
    code, out = verify(cast.acme)
    assert code == 1
    assert f"BROKEN at #{first.sequence} (event id {second.pk})" in out


@postgres_only
def test_the_database_refuses_to_rewrite_or_delete_an_event(cast):
    write_events(cast.acme, 2)
    event = AuditEvent.objects.filter(tenant=cast.acme).order_by("sequence").first()
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="auth.nothing")
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    # Re-sealing a sealed event with other numbers is refused too.
    with pytest.raises(Exception, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(sequence=999, hash="f" * 64)
    assert verify(cast.acme)[0] == 0


def test_unknown_tenant_is_a_clear_error(cast):
    with pytest.raises(CommandError, match="No tenant 'nope'"):
        call_command("audit_verify", "--tenant", "nope")


WRITER = """
import sys, django
django.setup()
from django.db import transaction
from accounts.models import Tenant
from audit.services import record_event
tenant = Tenant.objects.get(slug=sys.argv[1])
for n in range(int(sys.argv[2])):
    with transaction.atomic():
        record_event("test.concurrent", tenant=tenant, data={"writer": sys.argv[3], "n": n})
"""


@pytest.mark.slow
def test_concurrent_writers_in_several_processes_keep_one_chain(cast, tmp_path, settings):
    env = {**os.environ, "CLUSTERRA_DATABASE_URL": _database_url(), "CLUSTERRA_DATA_DIR": str(tmp_path),
           "CLUSTERRA_SECRET_KEY": settings.SECRET_KEY, "DJANGO_SETTINGS_MODULE": "clusterra.settings"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, "acme", "40", str(n)], cwd=BASE_DIR, env=env)
               for n in range(4)]
    for proc in writers:
        assert proc.wait(timeout=180) == 0
    chain.seal_all()
    events = list(AuditEvent.objects.filter(tenant=cast.acme).order_by("sequence"))
    assert sum(e.action == "test.concurrent" for e in events) == 160
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    head = AuditChainHead.objects.get(key=chain.chain_key(cast.acme.pk))
    assert (head.sequence, head.hash) == (events[-1].sequence, events[-1].hash)
    assert verify(cast.acme)[0] == 0


@postgres_only
def test_the_web_role_can_append_and_seal_but_not_rewrite(cast):
    """The grants from `manage.py audit_grants`: a role that is not the table's owner."""
    import psycopg

    from audit.management.commands.audit_grants import grant_statements

    role = f"clusterra_web_{os.getpid()}"
    settings_dict = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {role}")  # a leftover of an interrupted run
        cursor.execute(f"CREATE ROLE {role} LOGIN")
        for statement in grant_statements(role):
            cursor.execute(statement)
    write_events(cast.acme, 2)
    event = AuditEvent.objects.filter(tenant=cast.acme).order_by("sequence").first()
    try:
        with psycopg.connect(host=settings_dict["HOST"], port=settings_dict["PORT"], dbname=settings_dict["NAME"],
                             user=role, autocommit=True) as web:
            for statement in ("UPDATE audit_auditevent SET action = 'x' WHERE id = %s",
                              "DELETE FROM audit_auditevent WHERE id = %s",
                              "TRUNCATE audit_auditevent",
                              "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    web.execute(statement, [event.pk] if "%s" in statement else None)
            # Changing a sealed event's chain columns (allowed columns) is still refused, by the trigger.
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                web.execute("UPDATE audit_auditevent SET hash = repeat('f', 64) WHERE id = %s", [event.pk])
            # What the portal does, as this role: insert an event, then seal it (once) and move the chain's head.
            new_id = web.execute(
                "INSERT INTO audit_auditevent (tenant_id, actor_label, action, target_type, target_id, data, created_at, "
                "prev_hash, hash) VALUES (%s, 'system', 'test.web_role', '', '', '{}', now(), '', '') RETURNING id",
                [cast.acme.pk]).fetchone()[0]
            key = chain.chain_key(cast.acme.pk)
            head = AuditChainHead.objects.get(key=key)
            new = AuditEvent.objects.get(pk=new_id)
            new.sequence, new.prev_hash = head.sequence + 1, head.hash
            new.hash = chain.event_hash(new)
            web.execute("UPDATE audit_auditevent SET sequence = %s, prev_hash = %s, hash = %s WHERE id = %s",
                        [new.sequence, new.prev_hash, new.hash, new_id])
            web.execute("UPDATE audit_auditchainhead SET sequence = %s, hash = %s WHERE key = %s",
                        [new.sequence, new.hash, key])
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):  # sealed once only
                web.execute("UPDATE audit_auditevent SET sequence = %s WHERE id = %s", [new.sequence + 1, new_id])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")
    assert AuditEvent.objects.get(pk=event.pk).action == event.action
    code, out = verify(cast.acme)
    assert code == 0 and f"head #{new.sequence}" in out, out
