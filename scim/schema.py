"""The SCIM side of the protocol, from scim2-models: the resource types, what the service announces, how
lenient it reads what Okta and Entra send, and SCIM filters turned into Django queries.

scim2-models parses and validates bodies (RFC 7643 schemas, per request context), applies PATCH operations
(RFC 7644 §3.5.2), parses filters (its lark grammar) and serialises responses and errors; this module only
maps attribute names to columns.
"""

import uuid

import email_validator
from django.db.models import Q
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    InvalidFilterException,
    Patch,
    ResourceType,
    ScimFilter,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    User,
)
from scim2_models.path import FilterVisitor, LogicalOperator
from scim2_models.path.expressions import AttrPath, CompareOperator, Comparison, LogicalExpr, Not, Present, ValuePath

# A directory's emails need not be deliverable from the internet (`jdoe@corp.local`, `x@lab.internal`, the
# tests' `.test`): scim2-models checks emails with email-validator (through pydantic's EmailStr), whose default
# refuses special-use domains. Only the syntax is checked here, as Django's validator does for the portal's own
# users (its module settings are the documented way to change that; nothing else in the portal uses it).
email_validator.GLOBALLY_DELIVERABLE = False
email_validator.SPECIAL_USE_DOMAIN_NAMES = []

UserResource = User[EnterpriseUser]
GroupResource = Group

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

MAX_RESULTS = 1000  # a page never holds more (ServiceProviderConfig filter.maxResults)
DEFAULT_COUNT = 100

# What Okta and Entra send that a strict reading refuses: unknown attributes are ignored (RFC 7644 §3.3
# leaves it to the service provider), a PATCH `remove` may carry the values to remove (Entra's group
# membership removals), and a `replace` on `emails[type eq "work"].value` with no work email yet adds one
# (Entra). `"op": "Replace"` and `"active": "False"` are accepted by scim2-models whatever the policy.
POLICY = ScimPolicy(unknown=ScimPolicy.Unknown.ignore,
                    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
                    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create)

CONFIG = ServiceProviderConfig(
    documentation_uri=None,
    patch=Patch(supported=True),
    bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
    filter=Filter(supported=True, max_results=MAX_RESULTS),
    change_password=ChangePassword(supported=False),
    sort=Sort(supported=False),
    etag=ETag(supported=False),
    authentication_schemes=[AuthenticationScheme(
        type=AuthenticationScheme.Type.oauthbearertoken, name="Bearer token",
        description="A SCIM token from the tenant admin console (Provisioning) or `manage.py scim_token`.",
        primary=True)],
)

PROVIDER = ScimProvider(models=[User, EnterpriseUser, Group],
                        resource_types=[ResourceType.from_resource(UserResource), ResourceType.from_resource(Group)],
                        config=CONFIG, policy=POLICY)


# --- filters ----------------------------------------------------------------------------------------

class Column:
    """A filterable attribute: its column, and how it compares."""

    def __init__(self, field: str, kind: str = "text", case_exact: bool = False):
        self.field, self.kind, self.case_exact = field, kind, case_exact


USER_COLUMNS = {
    "id": Column("scim_id", "uuid"),
    "username": Column("user_name"),
    "externalid": Column("external_id", case_exact=True),
    "displayname": Column("display_name"),
    "active": Column("active", "bool"),
    "meta.created": Column("created_at", "date"),
    "meta.lastmodified": Column("updated_at", "date"),
}
GROUP_COLUMNS = {
    "id": Column("scim_id", "uuid"),
    "displayname": Column("display_name"),
    "externalid": Column("external_id", case_exact=True),
    "members": Column("memberships__person__scim_id", "uuid"),  # `members eq` compares members.value
    "members.value": Column("memberships__person__scim_id", "uuid"),
    "meta.created": Column("created_at", "date"),
    "meta.lastmodified": Column("updated_at", "date"),
}

_LOOKUPS = {CompareOperator.eq: "exact", CompareOperator.co: "contains", CompareOperator.sw: "startswith",
            CompareOperator.ew: "endswith", CompareOperator.gt: "gt", CompareOperator.ge: "gte",
            CompareOperator.lt: "lt", CompareOperator.le: "lte"}


class _ToQ(FilterVisitor[Q]):
    def __init__(self, columns: dict[str, Column], schema: str):
        self.columns, self.schema = columns, schema.lower()
        self.prefix = ""  # inside members[...]: the attribute the value filter selects into

    def _column(self, attr_path: AttrPath) -> Column:
        if attr_path.uri and attr_path.uri.lower() != self.schema:
            raise InvalidFilterException(detail=f"Filtering on {attr_path} is not supported.")
        name = f"{attr_path.attr}.{attr_path.sub_attr}" if attr_path.sub_attr else attr_path.attr
        name = f"{self.prefix}.{name}" if self.prefix else name
        column = self.columns.get(name.lower())
        if column is None:
            supported = ", ".join(sorted({k for k in self.columns if "." not in k or k.startswith("meta")}))
            raise InvalidFilterException(detail=f"Filtering on {name} is not supported (supported: {supported}).")
        return column

    def visit_comparison(self, node: Comparison) -> Q:
        column = self._column(node.attr_path)
        value, op = node.value, node.op
        if column.kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"  # "active eq \"False\"": the spelling some clients send
            if op not in (CompareOperator.eq, CompareOperator.ne) or not isinstance(value, bool):
                raise InvalidFilterException(detail=f"{node.attr_path} compares with eq or ne and true or false.")
            query = Q(**{column.field: value})
            return ~query if op == CompareOperator.ne else query
        if value is None:
            if op not in (CompareOperator.eq, CompareOperator.ne):
                raise InvalidFilterException(detail="null compares with eq or ne only.")
            query = Q(**{column.field: ""}) if column.kind == "text" else Q(**{f"{column.field}__isnull": True})
            return ~query if op == CompareOperator.ne else query
        if not isinstance(value, str):
            raise InvalidFilterException(detail=f"{node.attr_path} compares with a string.")
        if column.kind == "uuid":
            if op not in (CompareOperator.eq, CompareOperator.ne):
                raise InvalidFilterException(detail=f"{node.attr_path} compares with eq or ne.")
            try:
                query = Q(**{column.field: uuid.UUID(value)})
            except ValueError:
                query = Q(pk__in=[])  # not an id this server ever gave: matches nothing
            return ~query if op == CompareOperator.ne else query
        lookup = _LOOKUPS.get(op if op != CompareOperator.ne else CompareOperator.eq)
        if column.kind == "date" and lookup not in ("exact", "gt", "gte", "lt", "lte"):
            raise InvalidFilterException(detail=f"{node.attr_path} compares with eq, ne, gt, ge, lt or le.")
        if column.kind == "text" and not column.case_exact and lookup in ("exact", "contains", "startswith", "endswith"):
            lookup = f"i{lookup}"
        query = Q(**{f"{column.field}__{lookup}": value})
        return ~query if op == CompareOperator.ne else query

    def visit_present(self, node: Present) -> Q:
        column = self._column(node.attr_path)
        if column.kind == "text":
            return ~Q(**{column.field: ""})
        if column.kind == "bool":
            return Q(pk__isnull=False)
        return Q(**{f"{column.field}__isnull": False})

    def visit_not(self, node: Not) -> Q:
        return ~self.visit(node.expr)

    def visit_logical_expr(self, node: LogicalExpr) -> Q:
        terms = [self.visit(term) for term in node.terms]
        query = terms[0]
        for term in terms[1:]:
            query = (query & term) if node.op == LogicalOperator.and_ else (query | term)
        return query

    def visit_value_path(self, node: ValuePath) -> Q:
        if self.prefix or node.attr_path.sub_attr:
            raise InvalidFilterException(detail="Nested value filters are not supported.")
        self.prefix = node.attr_path.attr
        try:
            return self.visit(node.val_filter)
        finally:
            self.prefix = ""


def filter_query(text: str, *, resource) -> Q:
    """The Q object for a SCIM filter on Users (`resource` UserResource) or Groups; InvalidFilterException if
    it cannot be parsed or names an attribute or comparison this server does not filter on."""
    parsed = ScimFilter[resource](text)  # raises InvalidFilterException with the column of a syntax error
    if resource is GroupResource:
        return _ToQ(GROUP_COLUMNS, GROUP_SCHEMA).visit(parsed.ast)
    return _ToQ(USER_COLUMNS, USER_SCHEMA).visit(parsed.ast)
