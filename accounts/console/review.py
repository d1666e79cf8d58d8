"""Looking, not changing: the mapping preview (what a sign-in would give). The Activity page is audit/views.py."""

from accounts import oidc
from accounts.access import AccessError, evaluate_access, groups_from_claims, next_free_uid
from accounts.console.common import console_view, page, posted
from accounts.console.forms import PreviewForm
from accounts.models import Membership, User
from clusters.models import ClusterAccount


@console_view
def preview(request, tenant):
    """Which role, clusters, POSIX name and uid a person (or pasted claims) would get. Nothing is written.

    A POST, because pasted claims do not belong in a URL (access logs); it changes nothing.
    """
    form = PreviewForm(posted(request), tenant=tenant)
    result = None
    if request.method == "POST" and form.is_valid():
        result = _preview(tenant, person=form.cleaned_data["person"], claims=form.cleaned_data["claims"])
    return page(request, tenant, "preview", "preview.html", {"form": form, "result": result,
                                                             "provider": oidc.provider_for_tenant(tenant)})


def _preview(tenant, *, person: User | None, claims: dict | None) -> dict:
    provider = oidc.provider_for_tenant(tenant)
    groups_claim = provider.groups_claim if provider else "groups"
    posix_name_claim = provider.posix_name_claim if provider else ""
    notes = []
    if person is not None:
        membership = Membership.objects.get(tenant=tenant, user=person)
        groups, user = list(membership.idp_groups), person
        claims = {"email": person.email, groups_claim: groups}
        if posix_name_claim:
            notes.append(f"The POSIX name claim {posix_name_claim!r} is not stored: for a person without a POSIX identity, "
                         "paste their claims instead.")
    else:
        groups = groups_from_claims(claims, groups_claim)
        email = claims.get("email") if isinstance(claims.get("email"), str) else ""
        # Only someone already in this tenant is looked up: the preview tells nothing about other tenants' people.
        user = User.objects.filter(email__iexact=email, memberships__tenant=tenant).first() if email else None
        membership = Membership.objects.filter(tenant=tenant, user=user).first() if user else None
        if user is not None:
            notes.append(f"{user.email} is already in this tenant: their existing POSIX identity is used.")
    decision = evaluate_access(tenant, groups, user=user, claims=claims, posix_name_claim=posix_name_claim)
    uid_text = ""
    if decision.posix is not None:
        if decision.posix.uid is not None:
            uid_text = str(decision.posix.uid)
        else:
            try:
                uid_text = f"the next free uid, {next_free_uid(tenant)} now"
            except AccessError as exc:
                uid_text = ""
                decision.posix_error = str(exc)
    return {"decision": decision, "groups": groups, "person": user, "membership": membership, "uid_text": uid_text,
            "notes": notes, "groups_claim": groups_claim, "outcome": _outcome(tenant, decision, user, membership)}


def _outcome(tenant, decision, user, membership) -> str:
    """What the next single sign-on would do with these groups (accounts/lifecycle.apply_access)."""
    active = membership is not None and membership.status == Membership.Status.ACTIVE
    if not decision.grants_access:
        if active:
            return "offboarded: no group gives access any more"
        return "refused: none of the groups gives access to this tenant"
    if membership is not None and not active and membership.status_source == Membership.Source.ADMIN:
        return f"refused: {membership.get_status_display().lower()} by an administrator (only an administrator reinstates)"
    if decision.posix is None:
        return f"refused: {decision.posix_error or 'no POSIX name can be made'}"
    lost = []
    if user is not None:
        wanted = {c.pk for c in decision.clusters}
        lost = [a.cluster.name for a in ClusterAccount.objects.filter(cluster__tenant=tenant, user=user, granted_by=ClusterAccount.Grant.RULE)
                .exclude(cluster_id__in=wanted).exclude(state=ClusterAccount.State.REVOKED).select_related("cluster")]
    outcome = f"signed in as {decision.role}"
    return outcome + (f"; loses {', '.join(lost)}" if lost else "")
