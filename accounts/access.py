"""Who gets what: IdP groups → tenant role and clusters, and the person's POSIX name and uid.

`evaluate_access` is pure reading: the sign-in, the provisioning sync and the mapping preview all call
it and get the same answer; nothing is written until accounts/lifecycle.py applies a decision.

POSIX names: the IdP's chosen claim (taken as is, refused if it is not a valid name) or the email's
local part, lowercased and sanitised. A name already held by someone else in the tenant, reserved,
or a system account on a head node gets the first free numbered variant (`jsmith2`, `jsmith3`, …),
so the same inputs always give the same name. uids come from the tenant's range and are never
given to anyone else (clusters.models.PosixIdentity), so a returning person gets theirs back.
"""

import pwd
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Max

from accounts.models import AccessRule, Membership
from clusters.models import Cluster, ClusterAccount, PosixIdentity

# Names the portal never creates or maps, whatever a claim says: system and service accounts found on
# head nodes, plus generic names that would let someone pose as an operator.
RESERVED_POSIX_NAMES = frozenset("""
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats nobody nogroup
    _apt systemd-network systemd-resolve systemd-timesync systemd-coredump messagebus sshd syslog uuidd tss
    polkitd avahi dnsmasq ntp chrony postfix dovecot rpc rpcuser nfsnobody nscd sssd ldap
    slurm munge mysql mariadb postgres redis nginx apache httpd docker podman admin administrator
    operator ec2-user ssm-user ubuntu debian centos rocky clusterra clusterra-poll clusterra-provisioner clusterra-auditor
""".split())

_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MAX_NAME = 32


class AccessError(Exception):
    """The claims cannot be turned into an account (the message says why, for the person or an admin)."""


@dataclass
class PosixPlan:
    username: str
    uid: int | None  # None: allocated when applied (the next free uid in the range)
    existing: bool  # the person already has this identity in the tenant
    notes: list[str] = field(default_factory=list)  # why the name differs from the wanted one


@dataclass
class AccessDecision:
    """What a person's groups give them in one tenant."""

    role: str | None  # Membership.Role value, or None: no access at all
    clusters: list[Cluster]
    matched_groups: list[str]
    unknown_groups: list[str]  # sent by the IdP but named by no rule: ignored
    posix: PosixPlan | None = None
    posix_error: str = ""

    @property
    def grants_access(self) -> bool:
        return self.role is not None


def groups_from_claims(claims: dict, claim_name: str) -> list[str]:
    """The groups claim as a list of strings (Okta and Entra send a list; some IdPs a single string)."""
    raw = claims.get(claim_name or "groups")
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return sorted({g.strip() for g in raw if isinstance(g, str) and g.strip()})


def evaluate_access(tenant, groups: list[str], *, user=None, claims: dict | None = None, posix_name_claim: str = "") -> AccessDecision:
    rules = list(AccessRule.objects.filter(tenant=tenant).prefetch_related("clusters"))
    by_group = {rule.group: rule for rule in rules}
    matched = [by_group[g] for g in groups if g in by_group]
    unknown = [g for g in groups if g not in by_group]
    role = None
    if any(r.role == AccessRule.Role.ADMIN for r in matched):
        role = Membership.Role.ADMIN
    elif matched:
        role = Membership.Role.MEMBER
    clusters: dict[int, Cluster] = {}
    for rule in matched:
        for cluster in rule.clusters.all():
            if cluster.tenant_id == tenant.pk:
                clusters[cluster.pk] = cluster
    decision = AccessDecision(role=role, clusters=sorted(clusters.values(), key=lambda c: c.name),
                              matched_groups=[r.group for r in matched], unknown_groups=unknown)
    if role is not None and claims is not None:
        try:
            decision.posix = plan_posix_identity(tenant, user=user, claims=claims, posix_name_claim=posix_name_claim)
        except AccessError as exc:
            decision.posix_error = str(exc)
    return decision


# --- POSIX names and uids ---------------------------------------------------------------------


def sanitise_local_part(email: str) -> str:
    """`Jean-Luc.Picard+hpc@x` → `jean-luc_picard`: a valid POSIX name, or '' if nothing is left."""
    local = email.split("@", 1)[0].split("+", 1)[0].lower()
    local = local.replace(".", "_")
    local = re.sub(r"[^a-z0-9_-]", "", local)
    local = local.lstrip("-")
    if local and local[0].isdigit():
        local = f"u{local}"
    return local[:_MAX_NAME]


def wanted_posix_name(claims: dict, posix_name_claim: str = "") -> str:
    if posix_name_claim:
        value = claims.get(posix_name_claim)
        if not isinstance(value, str) or not value:
            raise AccessError(f"The IdP sent no {posix_name_claim!r} claim, which this tenant uses for POSIX names.")
        if not _POSIX_NAME.match(value):
            raise AccessError(f"The {posix_name_claim!r} claim {value!r} is not a valid POSIX name "
                              "(1–32 lowercase letters, digits, '_' or '-', not starting with a digit or '-').")
        return value
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise AccessError("The IdP sent no email address, so no POSIX name can be made.")
    name = sanitise_local_part(email)
    if not name:
        raise AccessError(f"No POSIX name can be made from {email!r}; set a POSIX name claim for this tenant.")
    return name


def system_account_on_head_node(name: str) -> bool:
    """True if the name is a system account (uid below the minimum) on this machine.

    Only the local backend's head node can be read this cheaply; SSM head nodes are checked by the
    provisioning path, which refuses a name that exists there with another uid.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return False
    return entry.pw_uid < settings.TERMINAL_MIN_UID


def name_refusal(name: str, tenant, *, local_head_node: bool) -> str:
    """Why `name` cannot be given to a new person in `tenant`, or '' if it can."""
    if name in RESERVED_POSIX_NAMES or name.startswith("systemd-"):
        return f"{name!r} is a reserved system name"
    if local_head_node and system_account_on_head_node(name):
        return f"{name!r} is a system account on the head node"
    if PosixIdentity.objects.filter(tenant=tenant, username=name).exists() or \
            ClusterAccount.objects.filter(cluster__tenant=tenant, posix_username=name).exists():
        return f"{name!r} belongs to someone else in this tenant"
    return ""


def plan_posix_identity(tenant, *, user=None, claims: dict, posix_name_claim: str = "") -> PosixPlan:
    """The POSIX name and uid this person has or would get; nothing is written."""
    if user is not None and user.pk:
        identity = PosixIdentity.objects.filter(tenant=tenant, user=user).first()
        if identity is not None:
            return PosixPlan(identity.username, identity.uid, existing=True)
        adopted = ClusterAccount.objects.filter(cluster__tenant=tenant, user=user).order_by("pk").first()
        if adopted is not None:  # mapped by hand before identities existed: keep it
            return PosixPlan(adopted.posix_username, adopted.uid, existing=True,
                             notes=[f"kept from the existing mapping on {adopted.cluster.name}"])
    wanted = wanted_posix_name(claims, posix_name_claim)
    local = Cluster.objects.filter(tenant=tenant, backend=Cluster.Backend.LOCAL).exists()
    notes = []
    candidate = wanted
    for number in range(2, 1000):
        refusal = name_refusal(candidate, tenant, local_head_node=local)
        if not refusal:
            break
        if posix_name_claim:  # a name the IdP chose is never altered
            raise AccessError(f"The POSIX name from the {posix_name_claim!r} claim cannot be used: {refusal}.")
        notes.append(refusal)
        suffix = str(number)
        candidate = f"{wanted[:_MAX_NAME - len(suffix)]}{suffix}"
    else:
        raise AccessError(f"No free POSIX name near {wanted!r} in this tenant.")
    return PosixPlan(candidate, None, existing=False, notes=notes)


def _uid_on_this_machine(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def next_free_uid(tenant) -> int:
    """The lowest uid above every uid the tenant ever allocated in its range (never a reused one), skipping
    uids someone already has on a local head node (SSM head nodes refuse a taken uid at provisioning)."""
    top = PosixIdentity.objects.filter(tenant=tenant, uid__gte=tenant.uid_range_start, uid__lte=tenant.uid_range_end) \
        .aggregate(top=Max("uid"))["top"]
    uid = tenant.uid_range_start if top is None else top + 1
    local = Cluster.objects.filter(tenant=tenant, backend=Cluster.Backend.LOCAL).exists()
    while uid <= tenant.uid_range_end and (ClusterAccount.objects.filter(cluster__tenant=tenant, uid=uid).exists()
                                           or (local and _uid_on_this_machine(uid))):
        uid += 1
    if uid > tenant.uid_range_end:
        raise AccessError(f"The tenant's uid range {tenant.uid_range_start}–{tenant.uid_range_end} is used up.")
    return uid
