"""Write path for clusters and POSIX account mappings. Each change writes its audit event."""

from django.db.models import Q

from audit.services import record_event
from clusters.models import Cluster, ClusterAccount, PosixIdentity


def ensure_cluster(*, tenant, slug: str, name: str, backend: str = Cluster.Backend.LOCAL, actor=None, **fields) -> Cluster:
    cluster, created = Cluster.objects.get_or_create(tenant=tenant, slug=slug, defaults={"name": name, "backend": backend, **fields})
    if created:
        cluster.full_clean()
        record_event("cluster.create", tenant=tenant, actor=actor, target=cluster, data={"slug": slug, "backend": backend})
    return cluster


def map_account(*, cluster: Cluster, user, posix_username: str, uid: int, state: str = ClusterAccount.State.ACTIVE,
                actor=None) -> ClusterAccount:
    """Create or update the user's POSIX mapping on a cluster."""
    account = ClusterAccount.objects.filter(cluster=cluster, user=user).first()
    before = None if account is None else (account.posix_username, account.uid, account.state)
    if account is None:
        account = ClusterAccount(cluster=cluster, user=user)
    account.posix_username, account.uid, account.state = posix_username, uid, state
    if before != (posix_username, uid, state):
        account.full_clean()
        account.save()
        record_event("cluster_account.set", tenant=cluster.tenant, actor=actor, target=account,
                     data={"user": user.email, "posix_username": posix_username, "uid": uid, "state": state})
    _adopt_posix_identity(cluster.tenant, user, posix_username, uid)
    return account


def _adopt_posix_identity(tenant, user, posix_username: str, uid: int) -> None:
    """A hand-made mapping becomes the person's tenant-wide POSIX identity, if they have none and it is free."""
    if PosixIdentity.objects.filter(tenant=tenant, user=user).exists():
        return
    if PosixIdentity.objects.filter(tenant=tenant).filter(Q(username=posix_username) | Q(uid=uid)).exists():
        return  # shared by several people (the non-root demo maps everyone to one user): nothing to adopt
    identity = PosixIdentity.objects.create(tenant=tenant, user=user, username=posix_username, uid=uid)
    record_event("posix_identity.create", tenant=tenant, target=identity,
                 data={"user": user.email, "username": posix_username, "uid": uid, "notes": ["adopted from a mapping"]})


def configure_polling(cluster: Cluster, *, posix_username: str, uid: int, interval: int | None = None, actor=None) -> None:
    """Set the unprivileged POSIX user the job poller runs squeue as (and optionally its interval)."""
    fields = {"poll_posix_username": posix_username, "poll_uid": uid}
    if interval is not None:
        fields["poll_interval"] = interval
    if all(getattr(cluster, name) == value for name, value in fields.items()):
        return
    for name, value in fields.items():
        setattr(cluster, name, value)
    cluster.full_clean()
    cluster.save(update_fields=list(fields))
    record_event("cluster.polling.set", tenant=cluster.tenant, actor=actor, target=cluster, data=fields)


# The settings a tenant admin edits in the console (accounts/console); their changes go into the audit event.
CLUSTER_SETTINGS = ("name", "slug", "backend", "backend_settings", "idle_timeout", "max_session_duration", "home_template",
                    "shared_roots", "poll_posix_username", "poll_uid", "poll_interval", "slurm_account")


def save_cluster(cluster: Cluster, *, actor) -> Cluster:
    """Create or change a cluster (the admin console); the event lists what changed, old → new."""
    before = Cluster.objects.filter(pk=cluster.pk).first() if cluster.pk else None
    cluster.full_clean()
    cluster.save()
    if before is None:
        record_event("cluster.create", tenant=cluster.tenant, actor=actor, target=cluster,
                     data={"slug": cluster.slug, "backend": cluster.backend,
                           "settings": {name: getattr(cluster, name) for name in CLUSTER_SETTINGS}})
        return cluster
    changes = {name: [getattr(before, name), getattr(cluster, name)] for name in CLUSTER_SETTINGS
               if getattr(before, name) != getattr(cluster, name)}
    if changes:
        record_event("cluster.update", tenant=cluster.tenant, actor=actor, target=cluster, data={"slug": cluster.slug, "changes": changes})
    return cluster
