"""People: the list, a person's page, adding someone, and suspend / offboard / reinstate and the small fixes."""

from collections import defaultdict

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from accounts import lifecycle, throttle
from accounts.console.common import console_view, page, person_or_404, posted
from accounts.console.forms import AddPersonForm, OptionalReasonForm, PeopleFilterForm, ReasonForm
from accounts.models import ApiToken, IdentityLink, Membership
from accounts.services import revoke_api_token
from clusters.models import ClusterAccount, PosixIdentity
from terminal.actions import revoke_terminal_sessions, wait_until_ended
from terminal.models import TerminalSession

PAGE_SIZE = 50
SESSION_END_WAIT = 2.0  # seconds the page waits for the holding process to confirm a session ended


def _live_sessions(tenant):
    return TerminalSession.objects.in_tenant(tenant).filter(ended_at__isnull=True)


@console_view
def people(request, tenant):
    form = PeopleFilterForm(request.GET or None)
    memberships = Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__email")
    if form.is_valid():
        q, status = form.cleaned_data["q"].strip(), form.cleaned_data["status"]
        if q:
            named = Q(user__email__icontains=q) | Q(user__full_name__icontains=q)
            named |= Q(user__in=PosixIdentity.objects.filter(tenant=tenant, username__icontains=q).values("user"))
            named |= Q(user__in=ClusterAccount.objects.filter(cluster__tenant=tenant, posix_username__icontains=q).values("user"))
            memberships = memberships.filter(named)
        if status:
            memberships = memberships.filter(status=status)
    listing = Paginator(memberships, PAGE_SIZE).get_page(request.GET.get("page"))
    user_ids = [m.user_id for m in listing]
    identities = {i.user_id: i for i in PosixIdentity.objects.filter(tenant=tenant, user_id__in=user_ids)}
    accounts = defaultdict(list)
    for account in ClusterAccount.objects.filter(cluster__tenant=tenant, user_id__in=user_ids).select_related("cluster").order_by("cluster__name"):
        accounts[account.user_id].append(account)
    live = dict(_live_sessions(tenant).filter(user_id__in=user_ids).order_by().values("user_id").annotate(n=Count("id"))
                .values_list("user_id", "n"))
    rows = [{"membership": m, "user": m.user, "identity": identities.get(m.user_id), "accounts": accounts[m.user_id],
             "live": live.get(m.user_id, 0)} for m in listing]
    query = request.GET.copy()
    query.pop("page", None)
    return page(request, tenant, "people", "people.html", {"form": form, "rows": rows, "listing": listing, "query": query.urlencode()})


@console_view
def person(request, tenant, user_id):
    user, membership = person_or_404(tenant, user_id)
    try:
        locked_until, lock_error = throttle.lockout_status(user.email), ""
    except throttle.ThrottleUnavailable as exc:
        locked_until, lock_error = None, str(exc)
    return page(request, tenant, "people", "person.html", {
        "person": user, "membership": membership,
        "identity": PosixIdentity.objects.filter(tenant=tenant, user=user).first(),
        "accounts": ClusterAccount.objects.filter(cluster__tenant=tenant, user=user).select_related("cluster").order_by("cluster__name"),
        "sessions": _live_sessions(tenant).filter(user=user).select_related("cluster"),
        "tokens": ApiToken.objects.filter(tenant=tenant, user=user).order_by("-created_at"),
        "links": IdentityLink.objects.filter(tenant=tenant, user=user).order_by("issuer"),
        "locked_until": locked_until, "lock_error": lock_error, "is_self": user == request.user,
    })


@console_view
def add_person(request, tenant):
    form = AddPersonForm(posted(request), tenant=tenant)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            membership = lifecycle.onboard_person(tenant=tenant, email=data["email"], role=data["role"], clusters=list(data["clusters"]),
                                                  actor=request.user, full_name=data["full_name"], posix_plan=form.plan,
                                                  reason=data["reason"])
        except lifecycle.LifecycleError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Added {membership.user.email} as {membership.get_role_display().lower()}.")
            _report_accounts(request, tenant, membership.user)
            return redirect("console:person", tenant.slug, membership.user_id)
    return page(request, tenant, "people", "person_add.html", {"form": form})


def _report_accounts(request, tenant, user) -> None:
    """One message per cluster account that is not active (pending head-node work, with its error)."""
    for account in ClusterAccount.objects.filter(cluster__tenant=tenant, user=user).select_related("cluster"):
        if account.state == ClusterAccount.State.PENDING:
            error = f": {account.head_node_error}" if account.head_node_error else ""
            messages.warning(request, f"{account.cluster.name}: the POSIX account {account.posix_username} is pending on the "
                                      f"head node{error}. It is retried; see the person's page.")


# --- suspend, offboard, reinstate: a confirmation page, then the POST --------------------------------

STATUS_ACTIONS = {
    # action: (allowed from statuses, form, verb shown)
    "suspend": ({Membership.Status.ACTIVE}, ReasonForm, "Suspend"),
    "offboard": ({Membership.Status.ACTIVE, Membership.Status.SUSPENDED}, ReasonForm, "Offboard"),
    "reinstate": ({Membership.Status.SUSPENDED, Membership.Status.OFFBOARDED}, OptionalReasonForm, "Reinstate"),
}


@console_view
def change_status(request, tenant, user_id, action):
    user, membership = person_or_404(tenant, user_id)
    allowed, form_class, verb = STATUS_ACTIONS[action]
    back = redirect("console:person", tenant.slug, user.pk)
    if membership.status not in allowed:
        messages.error(request, f"{user.email} is {membership.get_status_display().lower()}: nothing to {action}.")
        return back
    if user == request.user and action != "reinstate":
        messages.error(request, "You cannot suspend or offboard yourself; ask another admin of the tenant.")
        return back
    form = form_class(posted(request))
    if request.method == "POST" and form.is_valid():
        reason = form.cleaned_data["reason"]
        if action == "suspend":
            report = lifecycle.suspend_person(tenant=tenant, user=user, actor=request.user, reason=reason)
            messages.success(request, f"Suspended {user.email}: {len(report.sessions_ended)} live terminal session(s) ended, "
                                      "web sessions signed out, API tokens stop working until reinstated.")
        elif action == "offboard":
            report = lifecycle.offboard_person(tenant=tenant, user=user, actor=request.user, reason=reason)
            for line in report.lines():
                (messages.warning if "retried" in line else messages.success)(request, line.strip())
        else:
            try:
                lifecycle.reinstate_person(tenant=tenant, user=user, actor=request.user, reason=reason)
            except lifecycle.LifecycleError as exc:
                messages.error(request, str(exc))
                return back
            messages.success(request, f"Reinstated {user.email}.")
            _report_accounts(request, tenant, user)
        return back
    return page(request, tenant, "people", "person_confirm.html", {"person": user, "membership": membership, "form": form,
                                                                    "action": action, "verb": verb})


# --- small fixes on a person's page ------------------------------------------------------------------


@console_view
@require_POST
def retry_account(request, tenant, user_id, account_id):
    user, _ = person_or_404(tenant, user_id)
    account = get_object_or_404(ClusterAccount.objects.in_tenant(tenant).select_related("cluster__tenant", "user"), pk=account_id, user=user)
    if not account.head_node_action:
        messages.info(request, f"Nothing is waiting on {account.cluster.name}.")
    elif lifecycle.retry_now(account, actor=request.user):
        messages.success(request, f"{account.cluster.name}: {account.get_head_node_action_display()}: done.")
    else:
        account.refresh_from_db()
        messages.warning(request, f"{account.cluster.name}: failed again: {account.head_node_error}")
    return redirect("console:person", tenant.slug, user.pk)


@console_view
@require_POST
def end_session(request, tenant, user_id, session_id):
    user, _ = person_or_404(tenant, user_id)
    session = get_object_or_404(_live_sessions(tenant).select_related("cluster__tenant", "user"), pk=session_id, user=user)
    marked = revoke_terminal_sessions(actor=request.user, session=session, message=f"Ended by {request.user.email}.")
    if wait_until_ended(marked, timeout=SESSION_END_WAIT):
        messages.success(request, f"Ended the session on {session.cluster.name}.")
    else:  # marked: the holding process ends it at its next check (terminal/processes.py)
        messages.warning(request, f"The end of the session on {session.cluster.name} is recorded; the server holding it "
                                  "ends it within seconds.")
    return redirect("console:person", tenant.slug, user.pk)


@console_view
@require_POST
def revoke_token(request, tenant, user_id, token_id):
    user, _ = person_or_404(tenant, user_id)
    token = get_object_or_404(ApiToken, pk=token_id, tenant=tenant, user=user)
    revoke_api_token(token, actor=request.user)
    messages.success(request, f"Token {token.name} of {user.email} revoked.")
    return redirect("console:person", tenant.slug, user.pk)


@console_view
@require_POST
def change_role(request, tenant, user_id):
    user, membership = person_or_404(tenant, user_id)
    role = request.POST.get("role", "")
    if user == request.user:
        messages.error(request, "You cannot change your own role; ask another admin.")
    elif role not in Membership.Role.values:
        messages.error(request, "Choose admin or member.")
    elif role != membership.role:
        lifecycle.change_role(tenant=tenant, user=user, role=role, actor=request.user)
        messages.success(request, f"{user.email} is now {Membership.Role(role).label.lower()} of {tenant.name}."
                         + (" Their IdP groups decide again at their next sign-in." if membership.idp_groups else ""))
    return redirect("console:person", tenant.slug, user.pk)


@console_view
@require_POST
def unlock_sign_in(request, tenant, user_id):
    user, _ = person_or_404(tenant, user_id)
    try:
        was_locked = throttle.unlock(email=user.email, actor=request.user, tenant=tenant, client_address=throttle.client_address(request))
    except throttle.ThrottleUnavailable as exc:
        messages.error(request, f"The sign-in counters cannot be reached now ({exc}); try again.")
    else:
        messages.success(request, f"{user.email} may sign in again." if was_locked else
                         f"{user.email} was not locked out; their failure count is cleared.")
    return redirect("console:person", tenant.slug, user.pk)
