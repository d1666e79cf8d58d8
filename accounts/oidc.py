"""Sign-in through a tenant's OpenID Connect provider (mozilla-django-oidc, one IdP per tenant).

mozilla-django-oidc reads one IdP from settings and checks neither `aud` nor `iss`. Here its views and
backend are subclassed so that:
- the IdP is the tenant's (IdentityProvider row, or CLUSTERRA_OIDC_* for a single-IdP install), chosen
  from the tenant slug or the email's domain, with endpoints from discovery (cached, with timeouts);
- the flow is authorization code with PKCE (S256), state and nonce (mozilla's session handling);
- the ID token is verified in full: signature against the IdP's JWKS with an asymmetric algorithm the
  IdP announces, iss, aud, azp, exp, iat and nonce; userinfo must name the same `sub`;
- what the person may do is decided from their groups at every sign-in (accounts/access.py) and
  applied through accounts/lifecycle.py; a refusal shows a page that says what happened and what to do.
"""

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import requests
from django.conf import settings
from django.contrib import auth
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from accounts.access import AccessError, evaluate_access, groups_from_claims
from accounts.models import IdentityLink, IdentityProvider, Membership, Tenant, User
from audit.services import record_event
from clusterra.durations import duration_words

logger = logging.getLogger(__name__)

# Asymmetric algorithms only: an HS256 token would be "signed" with our own client secret.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
DISCOVERY_TTL = 600  # seconds a discovery document or JWKS is reused
CLOCK_LEEWAY = 60  # seconds of clock difference tolerated on exp/iat


class SignInRefused(Exception):
    """The sign-in cannot go on; `message` tells the person what happened and what to do."""

    def __init__(self, message: str, *, status: int = 403, title: str = "Sign-in refused"):
        super().__init__(message)
        self.message, self.status, self.title = message, status, title


class IdpUnavailable(SignInRefused):
    def __init__(self, message: str):
        super().__init__(message, status=502, title="The identity provider is not answering")


# --- which IdP --------------------------------------------------------------------------------


def environment_provider() -> IdentityProvider | None:
    """The single-IdP install's provider from CLUSTERRA_OIDC_*, unsaved, or None."""
    if not settings.OIDC_ISSUER or not settings.OIDC_CLIENT_ID:
        return None
    tenant = Tenant.objects.filter(slug=settings.OIDC_TENANT).first()
    if tenant is None:
        return None
    provider = IdentityProvider(tenant=tenant, name=settings.OIDC_NAME, issuer=settings.OIDC_ISSUER, client_id=settings.OIDC_CLIENT_ID,
                                scopes=settings.OIDC_SCOPES, groups_claim=settings.OIDC_GROUPS_CLAIM,
                                posix_name_claim=settings.OIDC_POSIX_NAME_CLAIM, email_domains=settings.OIDC_EMAIL_DOMAINS)
    provider._plain_secret = settings.OIDC_CLIENT_SECRET or ""
    return provider


def provider_for_tenant(tenant: Tenant) -> IdentityProvider | None:
    provider = IdentityProvider.objects.filter(tenant=tenant, enabled=True).select_related("tenant").first()
    if provider is not None:
        return provider
    env = environment_provider()
    return env if env is not None and env.tenant_id == tenant.pk else None


def provider_for_hint(hint: str) -> IdentityProvider | None:
    """The IdP for a tenant slug or an email address (by its domain)."""
    hint = (hint or "").strip().lower()
    if "@" in hint:
        domain = hint.rsplit("@", 1)[1]
        for provider in IdentityProvider.objects.filter(enabled=True).select_related("tenant"):
            if domain in [d.lower() for d in provider.email_domains]:
                return provider
        env = environment_provider()
        if env is not None and domain in [d.lower() for d in env.email_domains]:
            return env
        return None
    tenant = Tenant.objects.filter(slug=hint).first()
    return provider_for_tenant(tenant) if tenant is not None else None


def sign_in_choices() -> list[IdentityProvider]:
    """The IdPs the sign-in page offers as buttons."""
    providers = list(IdentityProvider.objects.filter(enabled=True).select_related("tenant").order_by("tenant__name"))
    env = environment_provider()
    if env is not None and all(p.tenant_id != env.tenant_id for p in providers):
        providers.append(env)
    return providers


def sign_in_origins() -> list[str]:
    """The origins of every IdP a sign-in may be redirected to (for the page's Content-Security-Policy)."""
    origins = set()
    providers = list(IdentityProvider.objects.filter(enabled=True).values_list("issuer", flat=True))
    if settings.OIDC_ISSUER:
        providers.append(settings.OIDC_ISSUER)
    for issuer in providers:
        parts = urlparse(issuer)
        if parts.scheme in ("http", "https") and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(origins)


# --- discovery and keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    algorithms: tuple[str, ...]


_cache: dict[str, tuple[float, object]] = {}
_cache_lock = threading.Lock()


def _cached(key: str, fetch, *, refresh: bool = False):
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and not refresh and now - hit[0] < DISCOVERY_TTL:
        return hit[1]
    value = fetch()
    with _cache_lock:
        _cache[key] = (now, value)
    return value


def forget_cached(issuer: str | None = None) -> None:
    with _cache_lock:
        for key in [k for k in _cache if issuer is None or issuer in k]:
            del _cache[key]


def _get_json(url: str, what: str) -> dict:
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_TLS, allow_redirects=False)
    except requests.Timeout:
        raise IdpUnavailable(f"The identity provider did not answer within {duration_words(settings.OIDC_TIMEOUT)} ({what}).") from None
    except requests.RequestException as exc:
        raise IdpUnavailable(f"The identity provider cannot be reached ({what}: {type(exc).__name__}).") from None
    if response.status_code != 200:
        raise IdpUnavailable(f"The identity provider answered {response.status_code} for its {what}.")
    try:
        data = response.json()
    except ValueError:
        raise IdpUnavailable(f"The identity provider's {what} is not JSON.") from None
    if not isinstance(data, dict):
        raise IdpUnavailable(f"The identity provider's {what} is not a JSON object.")
    return data


def fetch_discovery(issuer: str) -> Discovery:
    """The IdP's endpoints from `<issuer>/.well-known/openid-configuration`, checked."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    data = _get_json(url, "discovery document")
    if data.get("issuer") != issuer:
        raise IdpUnavailable(f"The discovery document names the issuer {data.get('issuer')!r}, not {issuer!r}: "
                             "the configured issuer must match exactly (watch the trailing slash).")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not isinstance(data.get(k), str)]
    if missing:
        raise IdpUnavailable(f"The discovery document has no {', '.join(missing)}.")
    announced = data.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(a for a in announced if a in ALLOWED_ALGORITHMS)
    if not algorithms:
        raise IdpUnavailable(f"The identity provider signs ID tokens only with {', '.join(map(str, announced))}; "
                             "an asymmetric algorithm such as RS256 is needed.")
    return Discovery(issuer=issuer, authorization_endpoint=data["authorization_endpoint"], token_endpoint=data["token_endpoint"],
                     jwks_uri=data["jwks_uri"], userinfo_endpoint=data.get("userinfo_endpoint"),
                     end_session_endpoint=data.get("end_session_endpoint"), algorithms=algorithms)


def discovery(provider: IdentityProvider, *, refresh: bool = False) -> Discovery:
    return _cached(f"discovery {provider.issuer}", lambda: fetch_discovery(provider.issuer), refresh=refresh)


def _jwks(uri: str, *, refresh: bool = False) -> dict:
    return _cached(f"jwks {uri}", lambda: _get_json(uri, "signing keys (JWKS)"), refresh=refresh)


def signing_key(disco: Discovery, token: str) -> jwt.PyJWK:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignInRefused("The identity provider's answer is not a valid token.") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in disco.algorithms:
        raise SignInRefused(f"The ID token is signed with {alg!r}, which this IdP does not announce or the portal does not accept.")
    for refresh in (False, True):  # a key we have not seen: the IdP may have rotated; fetch once more
        keys = _jwks(disco.jwks_uri, refresh=refresh).get("keys") or []
        for jwk in keys:
            if isinstance(jwk, dict) and (kid is None or jwk.get("kid") == kid) and jwk.get("alg", alg) == alg:
                try:
                    return jwt.PyJWK(jwk, algorithm=alg)
                except jwt.PyJWTError:
                    continue
    raise SignInRefused("The ID token is signed with a key the identity provider does not publish (forged or from another IdP).")


def verify_id_token(provider: IdentityProvider, disco: Discovery, token: str, *, nonce: str | None) -> dict:
    """The ID token's claims after every check OpenID Connect Core §3.1.3.7 asks of a client."""
    key = signing_key(disco, token)
    try:
        claims = jwt.decode(token, key, algorithms=[key.algorithm_name], audience=provider.client_id, issuer=disco.issuer,
                            leeway=CLOCK_LEEWAY, options={"require": ["iss", "aud", "sub", "exp", "iat"]})
    except jwt.InvalidSignatureError:
        raise SignInRefused("The ID token's signature is not valid: it was not issued by your identity provider.") from None
    except jwt.ExpiredSignatureError:
        raise SignInRefused("The sign-in answer has expired. Sign in again; if this keeps happening, the clocks of this "
                            "server and the identity provider disagree.") from None
    except jwt.InvalidAudienceError:
        raise SignInRefused("The ID token was issued for another application (wrong audience). Ask your administrator to "
                            "check the client id.") from None
    except jwt.InvalidIssuerError:
        raise SignInRefused("The ID token comes from another issuer than this tenant's identity provider.") from None
    except jwt.ImmatureSignatureError:
        raise SignInRefused("The ID token is not valid yet: the clocks of this server and the identity provider disagree.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise SignInRefused(f"The ID token lacks the {exc.claim!r} claim.") from None
    except jwt.PyJWTError as exc:
        raise SignInRefused(f"The ID token is not valid ({type(exc).__name__}).") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != provider.client_id):
        raise SignInRefused("The ID token was issued to another application (authorized party). Start the sign-in again.")
    if settings.OIDC_CLAIMS_MAX_AGE and claims["iat"] < time.time() - settings.OIDC_CLAIMS_MAX_AGE - CLOCK_LEEWAY:
        raise SignInRefused("The ID token was issued too long ago. Sign in again.")
    if nonce is None or claims.get("nonce") != nonce:
        raise SignInRefused("The sign-in answer does not belong to this browser's sign-in (nonce mismatch). Start again from "
                            "the sign-in page.", status=400)
    return claims


# --- the sign-in decision ---------------------------------------------------------------------


def find_or_link_user(provider: IdentityProvider, claims: dict) -> User:
    """The person these verified claims name: by (issuer, sub), else by email (linking), else a new user."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SignInRefused("Your identity provider did not send an email address; ask your administrator to release the "
                            "'email' claim to this application.")
    if claims.get("email_verified") is False:
        raise SignInRefused("Your identity provider says your email address is not verified.")
    link = IdentityLink.objects.filter(issuer=provider.issuer, subject=claims["sub"]).select_related("user").first()
    name = claims.get("name") if isinstance(claims.get("name"), str) else ""
    if link is not None:
        user = link.user
    else:
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            user = User.objects.create_user(email, None, full_name=name[:200])  # no usable password: SSO only
            record_event("user.create", tenant=provider.tenant, target=user, data={"email": user.email, "via": "oidc"})
        IdentityLink.objects.create(user=user, tenant=provider.tenant, issuer=provider.issuer, subject=claims["sub"])
        record_event("identity_link.create", tenant=provider.tenant, actor=user, target=user,
                     data={"issuer": provider.issuer, "subject": claims["sub"]})
    if not user.is_active:
        raise SignInRefused("Your Clusterra account is disabled. Ask your administrator.")
    if name and not user.full_name:
        User.objects.filter(pk=user.pk).update(full_name=name[:200])
    return user


def sign_in_with_claims(provider: IdentityProvider, claims: dict, *, client_address: str | None = None) -> User:
    """Apply what the groups in `claims` give, then return the user to sign in (or refuse)."""
    from accounts.lifecycle import apply_access
    tenant = provider.tenant
    groups = groups_from_claims(claims, provider.groups_claim)
    with transaction.atomic():
        user = find_or_link_user(provider, claims)
    decision = evaluate_access(tenant, groups, user=user, claims=claims, posix_name_claim=provider.posix_name_claim)
    try:
        membership = apply_access(tenant=tenant, user=user, decision=decision, groups=groups, source="sign-in")
    except AccessError as exc:
        record_event("auth.sign_in.refused", tenant=tenant, actor=user, target=user, client_address=client_address,
                     data={"method": "oidc", "reason": str(exc), "groups": groups})
        raise SignInRefused(f"Your account cannot be set up: {exc} Ask your administrator.") from None
    if membership is None:
        existing = Membership.objects.filter(tenant=tenant, user=user).first()
        if existing is not None and existing.status != Membership.Status.ACTIVE and existing.status_source == Membership.Source.ADMIN:
            reason = f"Your access to {tenant.name} was {existing.get_status_display().lower()} by an administrator."
        else:
            reason = (f"You signed in at your identity provider, but none of your groups gives access to {tenant.name}. "
                      "Ask your administrator to add you to the right group.")
        record_event("auth.sign_in.refused", tenant=tenant, actor=user, target=user, client_address=client_address,
                     data={"method": "oidc", "reason": reason, "groups": groups})
        raise SignInRefused(reason)
    now = timezone.now()
    User.objects.filter(pk=user.pk).update(last_sign_in_at=now)
    IdentityLink.objects.filter(issuer=provider.issuer, subject=claims["sub"]).update(last_sign_in_at=now)
    record_event("auth.sign_in", tenant=tenant, actor=user, target=user, client_address=client_address,
                 data={"method": "oidc", "issuer": provider.issuer, "groups": groups, "role": membership.role,
                       "clusters": [c.slug for c in decision.clusters], "ignored_groups": decision.unknown_groups})
    user.refresh_from_db()
    return user


# --- mozilla-django-oidc, per tenant ----------------------------------------------------------

_STATE_PROVIDERS = "clusterra_oidc_state_tenants"  # session: state → tenant slug of the IdP it went to


def _provider_from_slug(slug: str | None) -> IdentityProvider | None:
    tenant = Tenant.objects.filter(slug=slug).first() if slug else None
    return provider_for_tenant(tenant) if tenant is not None else None


def refusal_page(request, error: SignInRefused):
    return render(request, "registration/sso_error.html", {"title": error.title, "message": error.message}, status=error.status)


class SignInStartView(OIDCAuthenticationRequestView):
    """`/oidc/authenticate/?tenant=<slug>` or `?hint=<email or slug>`: off to the tenant's IdP."""

    def __init__(self, *args, **kwargs):  # no global IdP settings: they are chosen per request
        super(OIDCAuthenticationRequestView, self).__init__(*args, **kwargs)
        self._overrides = {}

    def get_settings(self, attr, *args):
        if attr in self._overrides:
            return self._overrides[attr]
        return OIDCAuthenticationRequestView.get_settings(attr, *args)

    def get(self, request):
        hint = request.GET.get("tenant") or request.GET.get("hint") or ""
        provider = provider_for_hint(hint) if hint else None
        if provider is None and not hint and len(choices := sign_in_choices()) == 1:
            provider = choices[0]
        if provider is None:
            return refusal_page(request, SignInRefused(
                "No single sign-on is set up for that organisation or email domain. Check the spelling, or sign in with "
                "your password if your organisation allows it.", status=404, title="Unknown organisation"))
        try:
            disco = discovery(provider)
        except SignInRefused as exc:
            logger.warning("OIDC discovery for %s failed: %s", provider.tenant.slug, exc.message)
            return refusal_page(request, IdpUnavailable(f"{exc.message} Try again later; if your organisation allows it, "
                                                        "sign in with your password meanwhile."))
        self.OIDC_OP_AUTH_ENDPOINT = disco.authorization_endpoint
        self.OIDC_RP_CLIENT_ID = provider.client_id
        self._overrides = {"OIDC_RP_SCOPES": provider.scopes, "OIDC_USE_PKCE": True, "OIDC_USE_NONCE": True}
        response = super().get(request)
        state = parse_qs(urlparse(response["Location"]).query)["state"][0]
        states = request.session.get(_STATE_PROVIDERS, {})
        states[state] = provider.tenant.slug
        # mozilla keeps at most OIDC_MAX_STATES pending states; keep ours no larger.
        request.session[_STATE_PROVIDERS] = dict(list(states.items())[-settings.OIDC_MAX_STATES:])
        return response


class SignInCallbackView(OIDCAuthenticationCallbackView):
    """`/oidc/callback/`: mozilla's state, nonce and PKCE handling, then our checks and access decision."""

    def get(self, request):
        state = request.GET.get("state")
        if request.GET.get("error"):
            description = request.GET.get("error_description") or request.GET["error"]
            super().get(request)  # drops the state (no replay) and signs out
            return refusal_page(request, SignInRefused(f"Your identity provider did not sign you in: {description[:300]}", status=400))
        if not state or not request.GET.get("code"):
            return refusal_page(request, SignInRefused("This page is only reached from your identity provider.", status=400))
        slug = request.session.get(_STATE_PROVIDERS, {}).get(state)
        if slug is None or state not in request.session.get("oidc_states", {}):
            return refusal_page(request, SignInRefused(
                "This sign-in answer was already used or has expired (or came to another browser). Start again from the "
                "sign-in page.", status=400, title="Sign-in link already used"))
        request.oidc_provider = _provider_from_slug(slug)
        if request.oidc_provider is None:
            return refusal_page(request, SignInRefused("Single sign-on was turned off for this organisation meanwhile.", status=400))
        try:
            response = super().get(request)
        except SuspiciousOperation:
            return refusal_page(request, SignInRefused("The sign-in answer does not match this browser's sign-in. Start again.", status=400))
        error = getattr(request, "oidc_error", None)
        if error is not None:
            return refusal_page(request, error)
        return response

    def login_failure(self):
        error = getattr(self.request, "oidc_error", None) or SignInRefused("The sign-in did not complete. Start again.")
        return refusal_page(self.request, error)

    def login_success(self):
        response = super().login_success()
        self.request.session["clusterra_oidc_tenant"] = self.request.oidc_provider.tenant.slug
        return response


class TenantOIDCBackend(OIDCAuthenticationBackend):
    """Authenticates the callback of SignInCallbackView against the IdP it chose (request.oidc_provider)."""

    def __init__(self, *args, **kwargs):  # settings come from the request's IdP, not from global settings
        from django.contrib.auth import get_user_model
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        provider = getattr(request, "oidc_provider", None) if request is not None else None
        if provider is None or "nonce" not in kwargs:
            return None  # a password sign-in or another backend's business
        self.provider = provider
        try:
            self.disco = discovery(provider)
            self.OIDC_OP_TOKEN_ENDPOINT = self.disco.token_endpoint
            self.OIDC_OP_USER_ENDPOINT = self.disco.userinfo_endpoint
            self.OIDC_RP_CLIENT_ID = provider.client_id
            self.OIDC_RP_CLIENT_SECRET = provider.client_secret()
            return super().authenticate(request, **kwargs)
        except SignInRefused as exc:
            request.oidc_error = exc
        except requests.HTTPError as exc:  # the token endpoint refused the code
            status = exc.response.status_code if exc.response is not None else "?"
            logger.warning("OIDC token exchange for %s failed with %s", provider.tenant.slug, status)
            request.oidc_error = SignInRefused(f"Your identity provider refused to complete the sign-in (HTTP {status}). "
                                               "Start again; if it keeps failing, ask your administrator to check the "
                                               "client id, secret and redirect URI.", status=502)
        except requests.RequestException as exc:
            request.oidc_error = IdpUnavailable(f"The identity provider cannot be reached ({type(exc).__name__}). Try again later.")
        except AccessError as exc:
            request.oidc_error = SignInRefused(str(exc))
        if getattr(request, "oidc_error", None) is not None:
            record_event("auth.sign_in.refused", tenant=provider.tenant, client_address=request.META.get("REMOTE_ADDR"),
                         data={"method": "oidc", "reason": request.oidc_error.message})
        return None

    def get_settings(self, attr, *args):
        fixed = {"OIDC_TIMEOUT": settings.OIDC_TIMEOUT, "OIDC_VERIFY_SSL": settings.OIDC_VERIFY_TLS,
                 "OIDC_STORE_ID_TOKEN": True, "OIDC_STORE_ACCESS_TOKEN": False, "OIDC_TOKEN_USE_BASIC_AUTH": False,
                 "OIDC_USE_NONCE": True, "OIDC_CREATE_USER": True}
        if attr in fixed:
            return fixed[attr]
        return OIDCAuthenticationBackend.get_settings(attr, *args)

    def verify_token(self, token, **kwargs):
        if not isinstance(token, str) or not token:
            raise SignInRefused("Your identity provider sent no ID token. Ask your administrator to check the scopes (openid).")
        return verify_id_token(self.provider, self.disco, token, nonce=kwargs.get("nonce"))

    def get_or_create_user(self, access_token, id_token, payload):
        claims = dict(payload)
        if self.disco.userinfo_endpoint and access_token:
            userinfo = self.get_userinfo(access_token, id_token, payload)
            if userinfo.get("sub") != payload["sub"]:
                raise SignInRefused("The identity provider's user information names another person than its ID token.")
            claims = {**userinfo, **payload}  # the signed ID token wins where both say something
        return sign_in_with_claims(self.provider, claims, client_address=self.request.META.get("REMOTE_ADDR"))


# --- signing out ------------------------------------------------------------------------------


@require_POST
def sign_out(request):
    """Sign out here, then at the IdP too when it has an end-session endpoint (RP-initiated logout)."""
    slug = request.session.get("clusterra_oidc_tenant")
    id_token = request.session.get("oidc_id_token")
    if request.user.is_authenticated:
        record_event("auth.sign_out", actor=request.user, target=request.user, client_address=request.META.get("REMOTE_ADDR"))
    auth.logout(request)
    destination = reverse(settings.LOGOUT_REDIRECT_URL)
    provider = _provider_from_slug(slug)
    if provider is not None and id_token:
        try:
            disco = discovery(provider)
        except SignInRefused:
            disco = None
        if disco is not None and disco.end_session_endpoint:
            params = {"id_token_hint": id_token, "client_id": provider.client_id,
                      "post_logout_redirect_uri": request.build_absolute_uri(destination)}
            # A page that moves on to the IdP, not a redirect: CSP's form-action would have to allow every
            # IdP on every page (the sign-out form is in the navigation) to follow a redirect from this POST.
            return render(request, "registration/signed_out.html", {
                "idp_name": provider.name, "end_session_url": f"{disco.end_session_endpoint}?{urlencode(params)}"})
    return HttpResponseRedirect(destination)


def test_connection(provider: IdentityProvider) -> list[str]:
    """For the admin console: fetch discovery and keys afresh and say what is wrong (raises SignInRefused)."""
    disco = discovery(provider, refresh=True)
    keys = _jwks(disco.jwks_uri, refresh=True).get("keys") or []
    if not keys:
        raise IdpUnavailable("The identity provider publishes no signing keys.")
    notes = [f"Issuer {disco.issuer} answers; {len(keys)} signing key(s); ID tokens signed with {', '.join(disco.algorithms)}."]
    notes.append("RP-initiated logout: supported." if disco.end_session_endpoint else "RP-initiated logout: not offered by this IdP.")
    if not disco.userinfo_endpoint:
        notes.append("No userinfo endpoint: groups must be in the ID token.")
    return notes
