"""Write path for clusters and POSIX account mappings. Each change writes its audit event."""

from audit.services import record_event
from clusters.models import Cluster, ClusterAccount


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
    return account


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
