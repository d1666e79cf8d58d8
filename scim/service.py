"""SCIM writes: the IdP's users and groups, then what they give each person, through accounts/lifecycle.py.

Every write changes the SCIM rows (ScimUser, ScimGroup, ScimGroupMember), writes one `scim.*` audit event
(actor: the token's name), then reconciles each person it affects:

- an inactive person (`active: false`, or deleted) is offboarded: `offboard_person(source=idp)` ends their
  live terminals on every daphne process, revokes their API tokens and web sessions, locks the POSIX account;
- an active person gets what their groups give: `sync_groups(groups=<displayNames of their SCIM groups>,
  source="scim")` onboards, grants and revokes clusters, and offboards when no group gives access any more
  (the same decision as at sign-in, accounts/access.py). A person created without groups is left as they
  are until their first group arrives, so provisioning someone who already has access does not end it.

Reconciling a person is serialised per person (a PostgreSQL advisory lock) and reads their state afresh,
so concurrent requests (Entra sends them in parallel) end in the state of the last one.
"""

import contextlib
import logging
import uuid
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from pydantic import ValidationError as PydanticValidationError
from scim2_models import (
    Context,
    GroupMember,
    GroupMembership,
    InvalidValueException,
    Meta,
    PatchOp,
    SCIMException,
    UniquenessException,
)

from accounts import lifecycle
from accounts.access import AccessError
from accounts.models import Membership
from accounts.services import ensure_user
from audit.services import record_event
from scim.models import ScimGroup, ScimGroupMember, ScimToken, ScimUser
from scim.schema import POLICY, GroupResource, UserResource

logger = logging.getLogger(__name__)

MAX_LENGTH = 255  # userName, externalId, displayName
LOCK_NAMESPACE = 0x5C1A  # pg_advisory_lock(namespace, person) while a person is reconciled
DEACTIVATED = "deactivated in the IdP (SCIM)"
DELETED = "deleted in the IdP (SCIM)"


@dataclass
class ScimActor:
    """Who a SCIM write is recorded as: the token's name (audit events' actor_label), never the token."""

    token: ScimToken
    address: str | None = None
    pk = None

    @property
    def email(self) -> str:
        return f"scim:{self.token.name}"


def validation_error(exc: PydanticValidationError) -> SCIMException:
    """A pydantic error from scim2-models as the SCIM error it stands for (the first one)."""
    from scim2_models import Error
    errors = exc.errors()
    error = Error.from_validation_error(errors[0]) if errors else Error(status=400, scim_type="invalidValue", detail=str(exc))
    return SCIMException.from_error(error)


def _validated(model, body, context):
    try:
        return model.model_validate(body, scim_ctx=context, scim_policy=POLICY)
    except PydanticValidationError as exc:
        raise validation_error(exc) from None


def _replacement(model, body, original):
    """A PUT body as the resource that replaces `original`: read-only attributes kept, immutable ones checked."""
    replacement = _validated(model, body, Context.RESOURCE_REPLACEMENT_REQUEST)
    try:
        replacement.replace(original)
    except PydanticValidationError as exc:
        raise validation_error(exc) from None
    return replacement


def _patched(resource, body):
    try:
        patch = PatchOp[type(resource)].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=POLICY)
        patch.patch(resource, POLICY)
    except PydanticValidationError as exc:
        raise validation_error(exc) from None
    return resource


def _text(value, attribute: str, *, required: bool = False) -> str:
    text = (value or "").strip() if isinstance(value, str) or value is None else str(value)
    if required and not text:
        raise InvalidValueException(detail=f"{attribute} is required.")
    if len(text) > MAX_LENGTH:
        raise InvalidValueException(detail=f"{attribute} is longer than {MAX_LENGTH} characters.")
    return text


def _audit(action: str, *, tenant, actor: ScimActor, target, data: dict) -> None:
    record_event(action, tenant=tenant, actor=actor, target=target, client_address=actor.address,
                 data={"token": actor.token.name, **data})


# --- representation -----------------------------------------------------------------------------------


def user_resource(person: ScimUser, base_url: str):
    model = UserResource.model_validate({**person.resource, "id": str(person.scim_id)}, scim_policy=POLICY)
    model.meta = Meta(resource_type="User", created=person.created_at, last_modified=person.updated_at,
                      location=f"{base_url}/Users/{person.scim_id}")
    groups = ScimGroup.objects.filter(memberships__person=person).order_by("display_name")
    model.groups = [GroupMembership(value=str(g.scim_id), display=g.display_name, type="direct") for g in groups] or None
    return model


def group_resource(group: ScimGroup, base_url: str, *, members: bool = True):
    model = GroupResource(id=str(group.scim_id), display_name=group.display_name, external_id=group.external_id or None)
    model.meta = Meta(resource_type="Group", created=group.created_at, last_modified=group.updated_at,
                      location=f"{base_url}/Groups/{group.scim_id}")
    if members:
        people = ScimUser.objects.filter(group_memberships__group=group).order_by("user_name").values_list("scim_id", "user_name")
        model.members = [GroupMember(value=str(scim_id), display=name) for scim_id, name in people] or None
    return model


# --- users ---------------------------------------------------------------------------------------------


def _email_of(model) -> str:
    """The portal signs people in by email: the primary email, else the first, else a userName that is one."""
    emails = [e for e in (model.emails or []) if e.value]
    primary = next((e for e in emails if e.primary), emails[0] if emails else None)
    candidates = [str(primary.value)] if primary is not None else []
    candidates.append(model.user_name or "")
    for candidate in candidates:
        try:
            validate_email(candidate.strip())
        except ValidationError:
            continue
        return candidate.strip().lower()
    raise InvalidValueException(detail="The user needs an email address (emails, or a userName that is one): "
                                       "the portal signs people in by email.")


def _full_name(model) -> str:
    name = model.name
    parts = [getattr(name, "given_name", None), getattr(name, "family_name", None)] if name else []
    return (model.display_name or (name.formatted if name else None) or " ".join(p for p in parts if p) or "")[:200]


def _user_fields(model, *, previous_active: bool | None) -> dict:
    user_name = _text(model.user_name, "userName", required=True)
    resource = model.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    for computed in ("id", "meta", "groups"):
        resource.pop(computed, None)
    # `active` left out of a PUT or removed by a PATCH keeps what it was (never reactivates anyone);
    # a person created without it is active.
    active = model.active if model.active is not None else (True if previous_active is None else previous_active)
    resource["active"] = active
    return {"user_name": user_name, "user_name_key": user_name.lower(), "external_id": _text(model.external_id, "externalId"),
            "display_name": _text(model.display_name, "displayName"), "active": active, "resource": resource}


def _check_user_name_free(tenant, key: str, *, exclude=None) -> None:
    taken = ScimUser.objects.filter(tenant=tenant, user_name_key=key)
    if exclude is not None:
        taken = taken.exclude(pk=exclude.pk)
    if taken.exists():
        raise UniquenessException(detail="A user with this userName already exists in this tenant.")


def create_user(*, tenant, body: dict, actor: ScimActor) -> ScimUser:
    model = _validated(UserResource, body, Context.RESOURCE_CREATION_REQUEST)
    fields = _user_fields(model, previous_active=None)
    email = _email_of(model)
    _check_user_name_free(tenant, fields["user_name_key"])
    user = ensure_user(email=email, full_name=_full_name(model), actor=actor)
    existing = ScimUser.objects.filter(tenant=tenant, user=user).first()
    if existing is not None:
        raise UniquenessException(detail=f"{email} is already provisioned in this tenant, as userName {existing.user_name!r}.")
    try:
        with transaction.atomic():
            person = ScimUser.objects.create(tenant=tenant, user=user, **fields)
    except IntegrityError:
        raise UniquenessException(detail="A user with this userName or email already exists in this tenant.") from None
    _audit("scim.user.create", tenant=tenant, actor=actor, target=person,
           data={"id": str(person.scim_id), "userName": person.user_name, "externalId": person.external_id,
                 "email": user.email, "active": person.active})
    reconcile(person, actor=actor)
    return person


def replace_user(person: ScimUser, *, body: dict, actor: ScimActor, base_url: str) -> ScimUser:
    model = _replacement(UserResource, body, user_resource(person, base_url))
    return _save_user(person, model, actor=actor, action="scim.user.replace")


def patch_user(person: ScimUser, *, body: dict, actor: ScimActor, base_url: str) -> ScimUser:
    model = _patched(user_resource(person, base_url), body)
    return _save_user(person, model, actor=actor, action="scim.user.patch")


def _save_user(person: ScimUser, model, *, actor: ScimActor, action: str) -> ScimUser:
    fields = _user_fields(model, previous_active=person.active)
    _check_user_name_free(person.tenant, fields["user_name_key"], exclude=person)
    changed = sorted(name for name in ("user_name", "external_id", "display_name", "active")
                     if getattr(person, name) != fields[name])
    was_active = person.active
    for name, value in fields.items():
        setattr(person, name, value)
    try:
        with transaction.atomic():
            person.save()
    except IntegrityError:
        raise UniquenessException(detail="A user with this userName already exists in this tenant.") from None
    data = {"id": str(person.scim_id), "userName": person.user_name, "changed": changed, "active": person.active}
    _audit(action, tenant=person.tenant, actor=actor, target=person, data=data)
    if was_active != person.active or person.active:
        reconcile(person, actor=actor)
    return person


def delete_user(person: ScimUser, *, actor: ScimActor) -> None:
    _audit("scim.user.delete", tenant=person.tenant, actor=actor, target=person,
           data={"id": str(person.scim_id), "userName": person.user_name, "email": person.user.email})
    ScimUser.objects.filter(pk=person.pk).update(active=False)
    reconcile(person, actor=actor, reason=DELETED)
    person.delete()  # the portal user, their membership (offboarded) and their history stay


# --- groups --------------------------------------------------------------------------------------------


def _member_ids(model, tenant) -> tuple[set[int], list[str]]:
    """The ScimUser pks the group's members name, and the values that name nobody in this tenant (ignored)."""
    values = [str(m.value) for m in (model.members or []) if m.value]
    wanted = {}
    unknown = []
    for value in values:
        try:
            wanted[uuid.UUID(value)] = value
        except ValueError:
            unknown.append(value)
    found = dict(ScimUser.objects.filter(tenant=tenant, scim_id__in=list(wanted)).values_list("scim_id", "pk"))
    unknown += [value for key, value in wanted.items() if key not in found]
    return set(found.values()), unknown


def create_group(*, tenant, body: dict, actor: ScimActor) -> ScimGroup:
    model = _validated(GroupResource, body, Context.RESOURCE_CREATION_REQUEST)
    name = _text(model.display_name, "displayName", required=True)
    if ScimGroup.objects.filter(tenant=tenant, display_name_key=name.lower()).exists():
        raise UniquenessException(detail="A group with this displayName already exists in this tenant.")
    try:
        with transaction.atomic():
            group = ScimGroup.objects.create(tenant=tenant, display_name=name, display_name_key=name.lower(),
                                             external_id=_text(model.external_id, "externalId"))
    except IntegrityError:
        raise UniquenessException(detail="A group with this displayName already exists in this tenant.") from None
    return _apply_group(group, model, actor=actor, action="scim.group.create", created=True)


def replace_group(group: ScimGroup, *, body: dict, actor: ScimActor, base_url: str) -> ScimGroup:
    model = _replacement(GroupResource, body, group_resource(group, base_url))
    return _apply_group(group, model, actor=actor, action="scim.group.replace")


def patch_group(group: ScimGroup, *, body: dict, actor: ScimActor, base_url: str) -> ScimGroup:
    model = _patched(group_resource(group, base_url), body)
    return _apply_group(group, model, actor=actor, action="scim.group.patch")


def _apply_group(group: ScimGroup, model, *, actor: ScimActor, action: str, created: bool = False) -> ScimGroup:
    name = _text(model.display_name, "displayName", required=True)
    if ScimGroup.objects.filter(tenant=group.tenant, display_name_key=name.lower()).exclude(pk=group.pk).exists():
        raise UniquenessException(detail="A group with this displayName already exists in this tenant.")
    new, unknown = _member_ids(model, group.tenant)
    old = set(ScimGroupMember.objects.filter(group=group).values_list("person_id", flat=True))
    renamed = not created and name != group.display_name
    with transaction.atomic():
        group.display_name, group.display_name_key = name, name.lower()
        group.external_id = _text(model.external_id, "externalId")
        try:
            with transaction.atomic():
                group.save()
        except IntegrityError:
            raise UniquenessException(detail="A group with this displayName already exists in this tenant.") from None
        ScimGroupMember.objects.filter(group=group, person_id__in=old - new).delete()
        ScimGroupMember.objects.bulk_create([ScimGroupMember(group=group, person_id=pk) for pk in new - old],
                                            ignore_conflicts=True)
    names = dict(ScimUser.objects.filter(pk__in=old ^ new).values_list("pk", "user_name"))
    data = {"id": str(group.scim_id), "displayName": group.display_name,
            "added": sorted(names[pk] for pk in new - old), "removed": sorted(names[pk] for pk in old - new)}
    if renamed:
        data["renamed"] = True
    if unknown:
        data["ignored_members"] = unknown[:50]  # values naming no user of this tenant
    _audit(action, tenant=group.tenant, actor=actor, target=group, data=data)
    affected = (old | new) if renamed else (old ^ new)
    for person in ScimUser.objects.filter(pk__in=affected).select_related("tenant", "user"):
        reconcile(person, actor=actor)
    return group


def delete_group(group: ScimGroup, *, actor: ScimActor) -> None:
    members = list(ScimUser.objects.filter(group_memberships__group=group).select_related("tenant", "user"))
    _audit("scim.group.delete", tenant=group.tenant, actor=actor, target=group,
           data={"id": str(group.scim_id), "displayName": group.display_name, "members": len(members)})
    group.delete()
    for person in members:
        reconcile(person, actor=actor)


# --- what it gives -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _person_lock(pk: int):
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        yield  # SQLite writes one at a time anyway
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, pk])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, pk])


def reconcile(person: ScimUser, *, actor: ScimActor, reason: str = DEACTIVATED) -> None:
    """Make the person's access in the tenant what their SCIM state says (see the module docstring)."""
    with _person_lock(person.pk):
        person = ScimUser.objects.select_related("tenant", "user").filter(pk=person.pk).first()
        if person is None:
            return
        tenant, user = person.tenant, person.user
        if not person.active:
            membership = Membership.objects.filter(tenant=tenant, user=user).first()
            if membership is None or membership.status == Membership.Status.OFFBOARDED:
                return
            # An admin's suspension stays the admin's decision (only an admin reinstates); the IdP's
            # deactivation makes it an offboarding all the same.
            admin = membership.status == Membership.Status.SUSPENDED and membership.status_source == Membership.Source.ADMIN
            lifecycle.offboard_person(tenant=tenant, user=user, actor=actor, reason=reason,
                                      source=Membership.Source.ADMIN if admin else Membership.Source.IDP)
            return
        groups = sorted(ScimGroup.objects.filter(memberships__person=person).values_list("display_name", flat=True))
        if person.groups_applied is None and not groups:
            return  # nothing known yet: the person keeps whatever access they had
        try:
            lifecycle.sync_groups(tenant=tenant, user=user, groups=groups, source="scim", actor=actor)
        except AccessError as exc:  # e.g. no POSIX name can be made: recorded, the SCIM write stands
            logger.warning("SCIM: %s's groups in %s could not be applied: %s", user.email, tenant.slug, exc)
            _audit("scim.sync.fail", tenant=tenant, actor=actor, target=person,
                   data={"id": str(person.scim_id), "userName": person.user_name, "groups": groups, "error": str(exc)})
        ScimUser.objects.filter(pk=person.pk).update(groups_applied=groups)
