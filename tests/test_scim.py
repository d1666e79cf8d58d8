"""The SCIM 2.0 server (scim/, docs/scim.md): the requests Okta and Entra ID send, as they send them, against a
live daphne (the flows) and in-process (the protocol's edges: tokens, errors, filters, paging, discovery).

The flows onboard and offboard real throwaway POSIX users through accounts/lifecycle.py on this machine as the
head node (root, as in CI), like tests/test_lifecycle.py, and remove them afterwards.
"""

import json
import os
import secrets

import pytest
import requests
from django.core.management import call_command

from accounts.models import AccessRule, ApiToken, Membership, Tenant
from accounts.services import create_api_token
from audit.models import AuditEvent
from clusters.models import ClusterAccount, PosixIdentity
from clusters.posix import AccountLocked, check_posix_account
from clusters.services import ensure_cluster
from scim.models import ScimGroup, ScimToken, ScimUser
from scim.tokens import create_scim_token, revoke_scim_token
from scim.views import MAX_BODY
from tests.test_lifecycle import _free_uid_block
from tests.test_provisioning import remove_user

SCIM_JSON = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates real POSIX users with useradd: needs root (CI runs as root)")


class Answer:
    def __init__(self, status: int, body: bytes, headers):
        self.status, self.headers = status, headers
        self.raw = body
        self.json = json.loads(body) if body else None

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


class Scim:
    """A SCIM client: over HTTP to a live server (`base` given) or through Django's test client."""

    def __init__(self, token: str, *, base: str | None = None, client=None):
        self.token, self.base, self.client = token, base, client

    def __call__(self, method: str, path: str, body=None, *, params=None, token=None, content_type=SCIM_JSON,
                 raw: bytes | None = None) -> Answer:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if self.base is not None:
            if data is not None:
                headers["Content-Type"] = content_type
            r = requests.request(method, f"{self.base}/scim/v2{path}", params=params, data=data, headers=headers, timeout=60)
            return Answer(r.status_code, r.content, r.headers)
        from urllib.parse import urlencode
        url = f"/scim/v2{path}" + (f"?{urlencode(params)}" if params else "")
        extra = {"HTTP_AUTHORIZATION": headers["Authorization"]} if token else {}
        r = self.client.generic(method, url, data=data or b"", content_type=content_type, **extra)
        return Answer(r.status_code, r.content, r)


def _error(answer: Answer, status: int, scim_type: str | None = None) -> str:
    assert answer.status == status, answer
    assert answer.headers["Content-Type"].startswith(SCIM_JSON), answer.headers["Content-Type"]
    assert answer.json["schemas"] == [ERROR_SCHEMA] and answer.json["status"] == str(status), answer.json
    if scim_type is not None:
        assert answer.json.get("scimType") == scim_type, answer.json
    assert answer.json["detail"]
    return answer.json["detail"]


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(name="lab")
def lab_fixture(db):
    """A tenant with its own uid range, a local cluster (this machine), a rule `lab-hpc` → member on it, and
    cleanup of every POSIX account its people got."""
    start = _free_uid_block()
    tenant = Tenant.objects.create(slug=f"lab{secrets.token_hex(3)}", name="Lab", uid_range_start=start, uid_range_end=start + 19)
    cluster = ensure_cluster(tenant=tenant, slug="hpc", name="Lab HPC")
    rule = AccessRule.objects.create(tenant=tenant, group="lab-hpc", role="member")
    rule.clusters.set([cluster])
    _token, text = create_scim_token(tenant=tenant, name="Okta")

    class Lab:
        pass

    s = Lab()
    s.tenant, s.cluster, s.token = tenant, cluster, text
    yield s
    for identity in PosixIdentity.objects.filter(tenant=tenant):
        remove_user(identity.username, identity.uid)


def _state(tenant, email):
    membership = Membership.objects.filter(tenant=tenant, user__email=email).first()
    account = ClusterAccount.objects.filter(cluster__tenant=tenant, user__email=email).first()
    return membership, account


def _assert_onboarded(lab, email):
    membership, account = _state(lab.tenant, email)
    assert membership is not None and membership.status == "active" and membership.status_source == "idp", membership
    assert membership.idp_groups == ["lab-hpc"]
    assert account is not None and account.state == "active", account and (account.state, account.head_node_error)
    check_posix_account(account.posix_username, account.uid, need_login_shell=True)
    return account


def _assert_offboarded(lab, email, reason_has: str):
    membership, account = _state(lab.tenant, email)
    assert (membership.status, membership.status_source) == ("offboarded", "idp"), membership
    assert reason_has in membership.status_reason, membership.status_reason
    assert account.state == "revoked"
    with pytest.raises(AccountLocked):
        check_posix_account(account.posix_username, account.uid)


# --- the flows, against a live daphne -------------------------------------------------------------------------


@needs_root
@pytest.mark.slow
def test_okta_provisioning_flow(lab, live_daphne):
    """What Okta sends (OIN SCIM 2.0 app with Push Groups): connection test, lookup, create, get, group push,
    membership add/remove as PATCH with a value filter, rename, deactivate as a path-less PATCH, reactivate."""
    scim = Scim(lab.token, base=live_daphne)
    email = f"ct{secrets.token_hex(4)}@example.test"
    # Connection test and the existence check before a create.
    listing = scim("GET", "/Users", params={"startIndex": 1, "count": 2})
    assert listing.status == 200 and listing.headers["Content-Type"].startswith(SCIM_JSON)
    assert listing.json["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"] and listing.json["totalResults"] == 0
    lookup = scim("GET", "/Users", params={"filter": f'userName eq "{email}"', "startIndex": 1, "count": 100})
    assert lookup.status == 200 and lookup.json["totalResults"] == 0 and lookup.json.get("Resources", []) == []
    created = scim("POST", "/Users", {
        "schemas": [USER_SCHEMA], "userName": email, "name": {"givenName": "Jo", "familyName": "Doe"},
        "emails": [{"primary": True, "value": email, "type": "work"}], "displayName": "Jo Doe", "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7", "groups": [], "password": "1mz050nq", "active": True})
    assert created.status == 201, created
    user_id = created.json["id"]
    assert created.headers["Location"] == f"{live_daphne}/scim/v2/Users/{user_id}"
    assert created.json["userName"] == email and created.json["active"] is True and "password" not in created.json
    assert created.json["meta"]["resourceType"] == "User"
    got = scim("GET", f"/Users/{user_id}")
    assert got.status == 200 and got.json["name"] == {"givenName": "Jo", "familyName": "Doe"} and "password" not in got.json
    found = scim("GET", "/Users", params={"filter": f'userName eq "{email.upper()}"'})  # userName is not caseExact
    assert found.json["totalResults"] == 1 and found.json["Resources"][0]["id"] == user_id
    assert scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": email, "emails": [{"value": email}]}).status == 409
    # Nothing yet: no group gives anything.
    assert _state(lab.tenant, email) == (None, None)

    # Push Groups: create the group, then membership changes as PATCH.
    group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "lab-hpc", "members": []})
    assert group.status == 201, group
    group_id = group.json["id"]
    added = scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": user_id, "display": email}]}]})
    assert added.status == 204, added
    _assert_onboarded(lab, email)
    assert scim("GET", f"/Users/{user_id}").json["groups"] == [{"value": group_id, "display": "lab-hpc", "type": "direct"}]
    renamed = scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "value": {"id": group_id, "displayName": "lab-hpc"}}]})
    assert renamed.status == 204, renamed
    _assert_onboarded(lab, email)
    removed = scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "remove", "path": f'members[value eq "{user_id}"]'}]})
    assert removed.status == 204, removed
    _assert_offboarded(lab, email, "groups no longer give access")
    scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": user_id}]}]})
    account = _assert_onboarded(lab, email)  # back: same uid, same home
    assert account.uid == lab.tenant.uid_range_start

    # Deactivation: Okta's path-less PATCH with a value object.
    deactivated = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert deactivated.status == 200 and deactivated.json["active"] is False, deactivated
    _assert_offboarded(lab, email, "deactivated in the IdP (SCIM)")
    inactive = scim("GET", "/Users", params={"filter": f'userName eq "{email}" and active eq false'})
    assert inactive.json["totalResults"] == 1
    # A later group change does not bring an inactive person back; reactivation does.
    for name in ("lab-hpc-renamed", "lab-hpc"):
        assert scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "displayName", "value": name}]}).status == 204
    assert _state(lab.tenant, email)[0].status == "offboarded"
    reactivated = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "value": {"active": True}}]})
    assert reactivated.status == 200 and reactivated.json["active"] is True
    _assert_onboarded(lab, email)
    # Okta deletes a pushed group when it is unlinked: its members lose what it gave.
    assert scim("DELETE", f"/Groups/{group_id}").status == 204
    _assert_offboarded(lab, email, "groups no longer give access")
    assert scim("GET", f"/Groups/{group_id}").status == 404
    actions = set(AuditEvent.objects.filter(tenant=lab.tenant, actor_label="scim:Okta").values_list("action", flat=True))
    assert {"scim.user.create", "scim.group.create", "scim.group.patch", "scim.user.patch", "scim.group.delete",
            "person.offboard", "cluster_account.grant"} <= actions


@needs_root
@pytest.mark.slow
def test_entra_provisioning_flow(lab, live_daphne):
    """What Microsoft Entra ID sends: capitalised ops, a string "False", the enterprise extension, an email
    replaced through a value filter, members removed by value, excludedAttributes, and a hard delete."""
    scim = Scim(lab.token, base=live_daphne)
    user_name = f"Test_User_{secrets.token_hex(4)}"
    email = f"{user_name.lower()}@testuser.example"
    external = "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
    assert scim("GET", "/Users", params={"filter": f'userName eq "{user_name}"'}).json["totalResults"] == 0
    created = scim("POST", "/Users", {
        "schemas": [USER_SCHEMA, ENTERPRISE], "externalId": external, "userName": user_name, "active": True,
        "emails": [{"primary": True, "type": "work", "value": email}], "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [], ENTERPRISE: {"department": "Research", "employeeNumber": "42"}})
    assert created.status == 201, created
    user_id = created.json["id"]
    assert created.json[ENTERPRISE] == {"department": "Research", "employeeNumber": "42"}
    both = scim("GET", "/Users", params={"filter": f'userName eq "{user_name}" and externalId eq "{external}"'})
    assert both.json["totalResults"] == 1 and both.json["Resources"][0]["id"] == user_id
    assert scim("GET", "/Users", params={"filter": f'externalId eq "{external.upper()}"'}).json["totalResults"] == 0  # caseExact

    assert scim("GET", "/Groups", params={"excludedAttributes": "members",
                                          "filter": 'displayName eq "lab-hpc"'}).json["totalResults"] == 0
    group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                                     "displayName": "lab-hpc", "meta": {"resourceType": "Group"}})
    assert group.status == 201, group
    group_id = group.json["id"]
    assert scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Add", "path": "members", "value": [{"value": user_id}]}]}).status == 204
    _assert_onboarded(lab, email)
    listed = scim("GET", "/Groups", params={"excludedAttributes": "members", "filter": 'displayName eq "lab-hpc"'})
    assert listed.json["totalResults"] == 1 and "members" not in listed.json["Resources"][0]
    assert scim("GET", f"/Groups/{group_id}").json["members"] == [{"value": user_id, "display": user_name}]
    member = scim("GET", "/Groups", params={"filter": f'id eq "{group_id}" and members[value eq "{user_id}"]',
                                            "excludedAttributes": "members"})
    assert member.json["totalResults"] == 1

    updated = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": f"new.{email}"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
        {"op": "Add", "path": f"{ENTERPRISE}:department", "value": "HPC"}]})
    assert updated.status == 200, updated
    assert updated.json["emails"] == [{"value": f"new.{email}", "type": "work", "primary": True}]
    assert updated.json["name"]["familyName"] == "updatedFamilyName" and updated.json[ENTERPRISE]["department"] == "HPC"
    _assert_onboarded(lab, email)  # the portal user keeps the email it was linked by

    removed = scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Remove", "path": "members", "value": [{"value": user_id}]}]})
    assert removed.status == 204, removed
    _assert_offboarded(lab, email, "groups no longer give access")
    scim("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Add", "path": "members", "value": [{"value": user_id}]}]})
    _assert_onboarded(lab, email)

    disabled = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"}]})
    assert disabled.status == 200 and disabled.json["active"] is False, disabled
    _assert_offboarded(lab, email, "deactivated in the IdP (SCIM)")
    assert scim("DELETE", f"/Users/{user_id}").status == 204
    _error(scim("GET", f"/Users/{user_id}"), 404)
    assert scim("GET", f"/Groups/{group_id}").json.get("members") is None
    assert not ScimUser.objects.filter(tenant=lab.tenant).exists()
    assert Membership.objects.get(tenant=lab.tenant, user__email=email).status == "offboarded"  # history stays


@pytest.mark.slow
def test_bad_tokens_malformed_bodies_and_other_tenants_against_a_live_daphne(lab, live_daphne):
    scim = Scim(lab.token, base=live_daphne)
    _error(scim("GET", "/Users", token="cst_000000000000_nope"), 401)
    _error(scim("GET", "/Users", token=""), 401)
    assert scim("GET", "/Users", token="").headers["WWW-Authenticate"] == 'Bearer realm="SCIM"'
    detail = _error(scim("POST", "/Users", raw=b'{"userName": "x",'), 400, "invalidSyntax")
    assert "not JSON" in detail
    _error(scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "nobody"}), 400, "invalidValue")
    other = Tenant.objects.create(slug=f"oth{secrets.token_hex(3)}", name="Other")
    _t, other_token = create_scim_token(tenant=other, name="Entra")
    created = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "x@example.test"})
    assert created.status == 201
    theirs = Scim(other_token, base=live_daphne)
    assert theirs("GET", "/Users").json["totalResults"] == 0
    assert theirs("GET", "/Users", params={"filter": 'userName eq "x@example.test"'}).json["totalResults"] == 0
    _error(theirs("GET", f"/Users/{created.json['id']}"), 404)
    _error(theirs("DELETE", f"/Users/{created.json['id']}"), 404)
    _error(theirs("PATCH", f"/Users/{created.json['id']}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "active", "value": False}]}), 404)
    assert ScimUser.objects.get(scim_id=created.json["id"]).active is True


# --- in-process: tokens and the protocol's edges -------------------------------------------------------------


@pytest.fixture
def acme(cast, client):
    _token, text = create_scim_token(tenant=cast.acme, name="Okta", actor=cast.alice)
    cast.scim = Scim(text, client=client)
    cast.token_text = text
    return cast


def test_tokens_are_stored_hashed_revocable_and_audited_without_the_secret(acme):
    token = ScimToken.objects.get(tenant=acme.acme)
    secret = acme.token_text.split("_", 2)[2]
    assert acme.token_text.startswith(f"cst_{token.prefix}_") and secret not in token.secret_hash
    event = AuditEvent.objects.get(action="scim_token.create")
    assert event.actor_label == "alice@acme.test" and secret not in json.dumps(event.data)
    assert acme.scim("GET", "/Users").status == 200
    assert ScimToken.objects.get(pk=token.pk).last_used_at is not None
    assert revoke_scim_token(token, actor=acme.alice) is True
    _error(acme.scim("GET", "/Users"), 401)
    assert AuditEvent.objects.filter(action="scim_token.revoke", actor_label="alice@acme.test").exists()
    _error(acme.scim("GET", "/Users", token=acme.token_text.replace(secret, "x" * len(secret))), 401)


def test_a_signed_in_session_is_not_a_scim_credential(acme, client):
    client.force_login(acme.alice)  # the tenant's admin, signed in
    _error(acme.scim("GET", "/Users", token=""), 401)


def test_failed_tokens_are_throttled_with_retry_after(acme, settings):
    settings.SIGNIN_ADDRESS_LIMIT = 3
    for _ in range(3):
        _error(acme.scim("GET", "/Users", token="cst_aaaaaaaaaaaa_wrong"), 401)
    locked = acme.scim("GET", "/Users", token=acme.token_text)  # the right token during the lockout: refused
    _error(locked, 429)
    assert int(locked.headers["Retry-After"]) > 0
    assert AuditEvent.objects.filter(action="auth.lockout").exists()


def test_bodies_are_json_objects_of_a_limited_size(acme):
    scim = acme.scim
    _error(scim("POST", "/Users", raw=b"[1, 2]"), 400, "invalidSyntax")
    _error(scim("POST", "/Users", raw=b"\xff\xfe"), 400, "invalidSyntax")
    _error(scim("POST", "/Users", {"userName": "a@b.test"}, content_type="text/plain"), 415)
    big = json.dumps({"schemas": [USER_SCHEMA], "userName": "big@acme.test", "displayName": "x" * MAX_BODY}).encode()
    _error(scim("POST", "/Users", raw=big), 413)
    assert scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "json@acme.test"},
                content_type="application/json").status == 201
    assert not ScimUser.objects.filter(user_name__startswith="big").exists()


def test_unknown_attributes_are_ignored_and_bad_values_are_scim_errors(acme):
    scim = acme.scim
    created = scim("POST", "/Users", {"schemas": [USER_SCHEMA, "urn:example:custom:1.0"], "userName": "dana@acme.test",
                                      "favouriteColour": "teal", "urn:example:custom:1.0": {"x": 1}, "active": True})
    assert created.status == 201, created
    assert "favouriteColour" not in created.json and "urn:example:custom:1.0" not in created.json
    user_id = created.json["id"]
    ops = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "nickname2", "value": "x"}]}
    assert scim("PATCH", f"/Users/{user_id}", ops).status == 200  # an unknown path changes nothing
    cases = [
        ({"Operations": [{"op": "frobnicate", "path": "active", "value": True}]}, "invalidValue"),
        ({"Operations": [{"op": "remove", "path": 'emails[type eq'}]}, "invalidPath"),
        ({"Operations": [{"op": "replace", "path": "id", "value": "x"}]}, "mutability"),
        ({"Operations": [{"op": "remove", "path": "userName"}]}, "mutability"),
        ({"Operations": [{"op": "replace", "path": "active", "value": "maybe"}]}, "invalidValue"),
        ({"Operations": []}, "invalidValue"),
        ({"Operations": "replace"}, None),
    ]
    for body, scim_type in cases:
        answer = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], **body})
        _error(answer, 400, scim_type)
    _error(scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "y" * 300 + "@acme.test"}), 400, "invalidValue")
    _error(scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": 5}), 400)
    _error(scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA]}), 400)
    _error(scim("GET", "/Users/not-a-uuid"), 404)
    _error(scim("POST", "/Users/" + user_id, {}), 405)
    _error(scim("GET", "/Bulk"), 501)
    _error(scim("GET", "/Nothing/here"), 404)
    assert ScimUser.objects.get(scim_id=user_id).active is True


def test_filters_paging_and_unsupported_filters(acme):
    scim = acme.scim
    ids = []
    for i in range(5):
        answer = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": f"p{i}@acme.test", "externalId": f"ext-{i}",
                                         "displayName": f"Person {i}"})
        ids.append(answer.json["id"])
    page = scim("GET", "/Users", params={"startIndex": 2, "count": 2})
    assert page.json["totalResults"] == 5 and page.json["startIndex"] == 2 and page.json["itemsPerPage"] == 2
    assert [r["id"] for r in page.json["Resources"]] == ids[1:3]
    empty = scim("GET", "/Users", params={"count": 0}).json
    assert (empty["totalResults"], empty["itemsPerPage"], empty.get("Resources", [])) == (5, 0, [])
    both = scim("GET", "/Users", params={"filter": 'userName eq "P3@ACME.TEST" and externalId eq "ext-3"'})
    assert [r["id"] for r in both.json["Resources"]] == [ids[3]]
    assert scim("GET", "/Users", params={"filter": 'displayName eq "person 4"'}).json["Resources"][0]["id"] == ids[4]
    assert scim("GET", "/Users", params={"filter": f'id eq "{ids[0]}" or userName sw "p1"'}).json["totalResults"] == 2
    only = scim("GET", "/Users", params={"filter": 'userName eq "p2@acme.test"', "attributes": "userName"})
    assert only.json["Resources"] == [{"schemas": [USER_SCHEMA], "id": ids[2], "userName": "p2@acme.test"}]
    for bad in ['userName eq', 'userName zz "x"', 'title eq "x"', 'emails[type eq "work"]', '(userName eq "x"']:
        _error(scim("GET", "/Users", params={"filter": bad}), 400, "invalidFilter")
    _error(scim("GET", "/Users", params={"count": "many"}), 400)


def test_discovery_endpoints(acme):
    scim = acme.scim
    config = scim("GET", "/ServiceProviderConfig").json
    assert config["patch"] == {"supported": True} and config["filter"] == {"supported": True, "maxResults": 1000}
    assert config["bulk"]["supported"] is False and config["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = scim("GET", "/ResourceTypes").json
    assert {r["name"]: r["endpoint"] for r in types["Resources"]} == {"User": "/Users", "Group": "/Groups"}
    assert scim("GET", "/ResourceTypes/User").json["schemaExtensions"][0]["schema"] == ENTERPRISE
    schemas = scim("GET", "/Schemas").json
    assert {s["id"] for s in schemas["Resources"]} == {USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE}
    user_schema = scim("GET", f"/Schemas/{USER_SCHEMA}").json
    assert any(a["name"] == "userName" for a in user_schema["attributes"])
    _error(scim("GET", "/Schemas/urn:nope"), 404)


@pytest.fixture
def bare(db, client):
    """A tenant with no clusters (nothing on a head node) and a rule `sci-users` → member."""
    tenant = Tenant.objects.create(slug=f"sci{secrets.token_hex(3)}", name="Science")
    AccessRule.objects.create(tenant=tenant, group="sci-users", role="member")
    _token, text = create_scim_token(tenant=tenant, name="Okta")

    class Bare:
        pass

    b = Bare()
    b.tenant, b.scim, b.client = tenant, Scim(text, client=client), client
    return b


def test_deactivating_a_person_with_access_offboards_them_and_group_rules_apply(bare):
    """In-process, with a rule that gives the role only (no cluster, so no head node): the write paths."""
    from accounts.services import ensure_user, set_membership
    scim, tenant = bare.scim, bare.tenant
    dana = ensure_user(email=f"dana{secrets.token_hex(3)}@sci.test")
    set_membership(tenant=tenant, user=dana, role="member")  # had access before the IdP provisioned her
    created = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": dana.email,
                                      "emails": [{"value": dana.email, "primary": True}]})
    assert created.status == 201
    user_id = created.json["id"]
    assert Membership.objects.get(tenant=tenant, user=dana).status == "active"  # no groups yet: untouched
    group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "sci-users",
                                     "members": [{"value": user_id}, {"value": "0b5e0000-0000-4000-8000-000000000000"}]})
    assert group.status == 201 and group.json["members"] == [{"value": user_id, "display": dana.email}]
    event = AuditEvent.objects.get(action="scim.group.create", tenant=tenant)
    assert event.data["added"] == [dana.email] and event.data["ignored_members"] == ["0b5e0000-0000-4000-8000-000000000000"]
    membership = Membership.objects.get(tenant=tenant, user=dana)
    assert (membership.status, membership.idp_groups) == ("active", ["sci-users"])
    _api, api_text = create_api_token(user=dana, tenant=tenant, name="cli")
    assert bare.client.get("/v1/clusters", HTTP_AUTHORIZATION=f"Bearer {api_text}").status_code == 200
    answer = scim("PATCH", f"/Users/{user_id}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"}]})
    assert answer.status == 200 and answer.json["active"] is False
    membership.refresh_from_db()
    assert (membership.status, membership.status_source, membership.status_reason) == (
        "offboarded", "idp", "deactivated in the IdP (SCIM)")
    assert ApiToken.objects.get(user=dana).revoked_at is not None
    assert bare.client.get("/v1/clusters", HTTP_AUTHORIZATION=f"Bearer {api_text}").status_code == 401
    offboard = AuditEvent.objects.get(action="person.offboard", target_id=str(dana.pk))
    assert offboard.actor_label == "scim:Okta" and offboard.data["source"] == "idp"
    patch = AuditEvent.objects.get(action="scim.user.patch", tenant=tenant)
    assert patch.data["changed"] == ["active"] and patch.data["token"] == "Okta" and patch.client_address == "127.0.0.1"
    # A PUT without `active` does not reactivate anyone.
    put = scim("PUT", f"/Users/{user_id}", {"schemas": [USER_SCHEMA], "userName": dana.email, "displayName": "Dana"})
    assert put.status == 200 and put.json["active"] is False and put.json["displayName"] == "Dana"
    assert Membership.objects.get(tenant=tenant, user=dana).status == "offboarded"
    # Reactivated: her groups apply again.
    put = scim("PUT", f"/Users/{user_id}", {"schemas": [USER_SCHEMA], "userName": dana.email, "active": True})
    assert put.status == 200 and put.json["active"] is True and "displayName" not in put.json
    assert Membership.objects.get(tenant=tenant, user=dana).status == "active"
    # An admin's suspension is not undone by the IdP's groups.
    erin = ensure_user(email=f"erin{secrets.token_hex(3)}@sci.test")
    Membership.objects.create(tenant=tenant, user=erin, status="suspended", status_source="admin")
    erin_id = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": erin.email}).json["id"]
    scim("PATCH", f"/Groups/{group.json['id']}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": erin_id}]}]})
    assert Membership.objects.get(tenant=tenant, user=erin).status == "suspended"
    assert ScimGroup.objects.get(tenant=tenant).members.count() == 2
    # Renaming the group away from the rule's name takes what it gave.
    scim("PATCH", f"/Groups/{group.json['id']}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "displayName", "value": "sci-alumni"}]})
    assert Membership.objects.get(tenant=tenant, user=dana).status == "offboarded"


def test_console_provisioning_section_and_manage_py(acme, client, capsys):
    client.force_login(acme.alice)
    url = f"/t/{acme.acme.slug}/admin/provisioning/"
    page = client.get(url)
    assert page.status_code == 200 and b"http://testserver/scim/v2" in page.content and b"Okta" in page.content
    created = client.post(url, {"name": "Entra ID"})
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    token = ScimToken.objects.get(tenant=acme.acme, name="Entra ID")
    text = created.context["new_token"]
    assert text.startswith(f"cst_{token.prefix}_") and text.encode() in created.content
    assert Scim(text, client=client)("GET", "/Users").status == 200
    assert text.encode() not in client.get(url).content  # shown once
    client.post(f"/t/{acme.acme.slug}/admin/provisioning/tokens/{token.pk}/revoke/")
    assert ScimToken.objects.get(pk=token.pk).revoked_at is not None
    _error(Scim(text, client=client)("GET", "/Users", token=text), 401)
    live = ScimToken.objects.filter(tenant=acme.acme, revoked_at__isnull=True).get()
    revoke = f"/t/{acme.acme.slug}/admin/provisioning/tokens/{live.pk}/revoke/"
    for someone in (acme.bob, acme.charlie):  # a member, another tenant's admin: 404 like every console page
        client.force_login(someone)
        assert client.get(url).status_code == 404
        assert client.post(url, {"name": "sneaky"}).status_code == 404
        assert client.post(revoke).status_code == 404
    assert not ScimToken.objects.filter(name="sneaky").exists()
    assert ScimToken.objects.get(pk=live.pk).revoked_at is None
    call_command("scim_token", acme.acme.slug, "--name", "cli")
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("cst_") and ScimToken.objects.filter(tenant=acme.acme, name="cli").exists()
    call_command("scim_token", acme.acme.slug, "--list")
    assert "cli" in capsys.readouterr().out


def test_put_replaces_and_names_stay_unique_in_the_tenant(bare):
    scim = bare.scim
    one = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "one@sci.test"}).json["id"]
    two = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": "two@sci.test"}).json["id"]
    group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "sci-users", "members": [{"value": one}]}).json
    other = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "other"}).json
    _error(scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "SCI-USERS"}), 409, "uniqueness")
    replaced = scim("PUT", f"/Groups/{group['id']}", {"schemas": [GROUP_SCHEMA], "displayName": "sci-users",
                                                      "externalId": "g-1", "members": [{"value": two}]})
    assert replaced.status == 200 and replaced.json["members"] == [{"value": two, "display": "two@sci.test"}]
    assert replaced.json["externalId"] == "g-1" and replaced.json["id"] == group["id"]
    assert Membership.objects.get(tenant=bare.tenant, user__email="two@sci.test").status == "active"
    assert Membership.objects.get(tenant=bare.tenant, user__email="one@sci.test").status == "offboarded"
    _error(scim("PATCH", f"/Groups/{other['id']}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "displayName", "value": "Sci-Users"}]}), 409, "uniqueness")
    _error(scim("PATCH", f"/Users/{two}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "userName", "value": "ONE@sci.test"}]}), 409, "uniqueness")
    renamed = scim("PATCH", f"/Users/{two}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "userName", "value": "deux@sci.test"}]})
    assert renamed.status == 200 and renamed.json["userName"] == "deux@sci.test"
    assert scim("GET", f"/Groups/{group['id']}").json["members"] == [{"value": two, "display": "deux@sci.test"}]
    with_attributes = scim("PATCH", f"/Groups/{group['id']}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "externalId", "value": "g-2"}]}, params={"attributes": "externalId"})
    assert with_attributes.status == 200 and with_attributes.json["externalId"] == "g-2"
    assert scim("DELETE", f"/Groups/{group['id']}").status == 204
    assert Membership.objects.get(tenant=bare.tenant, user__email="two@sci.test").status == "offboarded"
