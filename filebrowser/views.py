"""File browser pages: thin views over filebrowser/actions.py (which validates, runs as the user, audits)."""

import functools
import posixpath
from urllib.parse import quote, urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.functional import cached_property
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from accounts.tenancy import get_visible_or_404
from clusters.models import Cluster, ClusterAccount
from filebrowser import actions

SCRIPT_SUFFIXES = (".sh", ".sbatch", ".slurm", ".job", ".bash")


class _Context:
    """The cluster (visible to the user, else 404) and the user's own active account on it (else 403)."""

    def __init__(self, request, tenant_slug, cluster_slug):
        self.cluster = get_visible_or_404(Cluster.objects.select_related("tenant"), request.user,
                                          tenant__slug=tenant_slug, slug=cluster_slug)
        self.account = (ClusterAccount.objects.select_related("cluster__tenant")
                        .filter(cluster=self.cluster, user=request.user, state=ClusterAccount.State.ACTIVE).first())
        self.request = request
        self._bases: dict[str, str] = {}

    def url(self, name: str, path: str | None = None) -> str:
        base = self._bases.get(name)
        if base is None:  # reversed once per page, not once per row
            base = self._bases[name] = reverse(name if ":" in name else f"filebrowser:{name}",
                                               args=[self.cluster.tenant.slug, self.cluster.slug])
        return f"{base}?{urlencode({'path': path})}" if path else base

    @cached_property
    def limits(self) -> actions.Limits | None:
        return actions.limits(self.account) if self.account else None

    def page(self, template: str, status: int = 200, **context):
        return render(self.request, template, {"cluster": self.cluster, "tenant": self.cluster.tenant, "account": self.account,
                                               "limits": self.limits, **context}, status=status)

    def refused(self, error: actions.FileActionError, back: str | None = None):
        return self.page("filebrowser/refused.html", status=error.status, error=str(error), back=back)

    def client(self):
        return self.request.META.get("REMOTE_ADDR")


def _crumbs(ctx: _Context, path: str) -> list[tuple[str, str]]:
    """(label, url) from the allowed root holding `path` (one crumb, the whole root) down to `path`."""
    root = max((r.rstrip("/") or "/" for r in actions.allowed_roots(ctx.account)
                if path == r.rstrip("/") or path.startswith(r.rstrip("/") + "/") or r == "/"), key=len, default="/")
    crumbs = [(root, ctx.url("browse", root))]
    current = root
    for part in path[len(root):].strip("/").split("/"):
        if part:
            current = posixpath.join(current, part)
            crumbs.append((part, ctx.url("browse", current)))
    return crumbs


def _links(ctx: _Context, path: str, *, directory: bool) -> dict:
    cwd = path if directory else posixpath.dirname(path)
    links = {"terminal": f"{ctx.url('terminal:page')}?{urlencode({'cwd': cwd})}"}
    if not directory:
        links["submit"] = f"{ctx.url('jobs:submit')}?{urlencode({'script_path': path})}"
    return links


def _guarded(view):
    """Reads the cluster and the account once, passes them to the view as `ctx`; refusals become the refusal
    page with their status (403 no active account, 404 no such file, 413 too large …)."""
    @functools.wraps(view)
    def wrapper(request, tenant_slug, cluster_slug, *args, **kwargs):
        ctx = _Context(request, tenant_slug, cluster_slug)  # another tenant's cluster: 404
        if ctx.account is None:
            return ctx.refused(actions.FileActionError("You have no active account on this cluster.", status=403),
                               back=reverse("clusters:detail", args=[tenant_slug, cluster_slug]))
        try:
            return view(request, ctx, *args, **kwargs)
        except actions.FileActionError as exc:
            return ctx.refused(exc, back=ctx.url("browse"))
    return wrapper


def _browse_page(ctx: _Context, raw_path: str | None, *, error: actions.FileActionError | None = None, status: int = 200):
    listing = actions.browse(ctx.account, raw_path)
    path = listing.resolved.path
    rows = []
    for entry in listing.entries:
        child = posixpath.join(path, entry.name)
        rows.append({
            "entry": entry, "path": child,
            "open_url": (ctx.url("browse" if entry.is_dir else "view", child)) if entry.usable else None,
            "download_url": ctx.url("download", child) if entry.usable and entry.is_file else None,
            "edit_url": ctx.url("edit", child) if entry.usable and entry.is_file and entry.size <= ctx.limits.edit else None,
            "submit_url": _links(ctx, child, directory=False)["submit"]
            if entry.usable and entry.is_file and entry.name.endswith(SCRIPT_SUFFIXES) else None,
        })
    places = [(r, ctx.url("browse", r)) for r in actions.allowed_roots(ctx.account)]
    crumbs = _crumbs(ctx, path)
    return ctx.page("filebrowser/browse.html", status=status, path=path, rows=rows, listing=listing, places=places,
                    crumbs=crumbs, links=_links(ctx, path, directory=True), error=str(error) if error else "",
                    parent_url=ctx.url("browse", posixpath.dirname(path)) if len(crumbs) > 1 else None)


@login_required
@_guarded
def browse(request, ctx: _Context):
    return _browse_page(ctx, request.GET.get("path"))


@login_required
@_guarded
def view_file(request, ctx: _Context):
    preview = actions.preview(ctx.account, request.GET.get("path"), actor=request.user, client_address=ctx.client())
    if preview.entry.is_dir:
        return redirect(ctx.url("browse", preview.path))
    return ctx.page("filebrowser/view.html", preview=preview, path=preview.path, crumbs=_crumbs(ctx, preview.path),
                    links=_links(ctx, preview.path, directory=False), download_url=ctx.url("download", preview.path),
                    edit_url=ctx.url("edit", preview.path) if preview.text is not None and preview.entry.size <= ctx.limits.edit else None)


@login_required
@_guarded
def download(request, ctx: _Context):
    result = actions.download(ctx.account, request.GET.get("path"), actor=request.user, client_address=ctx.client())
    name = posixpath.basename(result.path)
    if result.stream is None:
        response = HttpResponse(result.content, content_type="application/octet-stream")
    else:
        # Under ASGI Django would read a synchronous iterator whole before sending it: hand it the async one.
        body = result.stream.async_chunks() if isinstance(request, ASGIRequest) else result.stream.chunks()
        response = StreamingHttpResponse(body, content_type="application/octet-stream")
    response["Content-Length"] = str(result.size)
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class _UploadLimit(FileUploadHandler):
    """First in the chain: stops reading a file as soon as it passes the limit, so Django's upload file never
    holds more (the file is then missing from request.FILES). Under daphne the whole request body has been
    spooled to a temporary file before the view runs: nginx's client_max_body_size bounds that."""

    def __init__(self, request, limit: int):
        super().__init__(request)
        self.limit = limit
        self.too_large = False

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > self.limit:
            self.too_large = True
            raise SkipFile()
        return raw_data

    def file_complete(self, file_size):
        return None


def _declared_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


@csrf_exempt  # the upload handler must be in place before the body is read; CSRF is checked just below
@login_required
@_guarded
def upload(request, ctx: _Context):
    if _declared_length(request) > ctx.limits.upload + actions.UPLOAD_FORM_HEADROOM:
        # Refused before a byte of the body is read (under daphne the ASGI handler has spooled it already;
        # nginx's client_max_body_size is what keeps it off the machine: docs/files.md).
        raise actions.FileActionError(actions.upload_too_large(None, ctx.limits), status=413)
    guard = _UploadLimit(request, ctx.limits.upload)
    request.upload_handlers.insert(0, guard)
    return _upload(request, ctx, guard)


@csrf_protect
@require_POST
def _upload(request, ctx: _Context, guard: _UploadLimit):
    directory = request.POST.get("path")
    uploaded = request.FILES.get("file")
    try:
        if guard.too_large:
            raise actions.FileActionError(actions.upload_too_large(None, ctx.limits), status=413)
        if uploaded is None:
            raise actions.FileActionError("Choose a file to upload.")
        path = actions.upload(ctx.account, directory, uploaded, replace=request.POST.get("replace") == "1",
                              actor=request.user, client_address=ctx.client())
    except actions.FileActionError as exc:
        return _browse_page(ctx, directory, error=exc, status=exc.status)
    messages.success(request, f"Uploaded {path}.")
    return redirect(ctx.url("browse", posixpath.dirname(path)))


@login_required
@require_POST
@_guarded
def mkdir(request, ctx: _Context):
    directory = request.POST.get("path")
    try:
        path = actions.make_directory(ctx.account, directory, request.POST.get("name"), actor=request.user,
                                      client_address=ctx.client())
    except actions.FileActionError as exc:
        return _browse_page(ctx, directory, error=exc, status=exc.status)
    messages.success(request, f"Created {path}.")
    return redirect(ctx.url("browse", path))


@login_required
@_guarded
def edit(request, ctx: _Context):
    if request.method != "POST":
        state = actions.open_for_edit(ctx.account, request.GET.get("path"), actor=request.user, client_address=ctx.client())
        return _edit_page(ctx, state.path, state.real_path, state.text, state.sha256, state.crlf)
    path, text, sha256 = request.POST.get("path"), request.POST.get("text", ""), request.POST.get("sha256", "")
    crlf = request.POST.get("crlf") == "1"
    try:
        real = actions.save_edit(ctx.account, path, text, sha256, crlf=crlf, actor=request.user, client_address=ctx.client())
    except actions.FileActionError as exc:
        # The user's text stays in the form, so a refusal (changed on disk) loses nothing.
        real_path = actions.clean_path(ctx.account, path)
        return _edit_page(ctx, path, real_path, text, sha256, crlf, error=exc)
    messages.success(request, f"Saved {real}.")
    return redirect(ctx.url("view", real))


def _edit_page(ctx, path, real_path, text, sha256, crlf, *, error=None):
    return ctx.page("filebrowser/edit.html", status=error.status if error else 200, path=path, real_path=real_path, text=text,
                    sha256=sha256, crlf=crlf, error=str(error) if error else "", crumbs=_crumbs(ctx, real_path),
                    links=_links(ctx, real_path, directory=False), view_url=ctx.url("view", real_path))
