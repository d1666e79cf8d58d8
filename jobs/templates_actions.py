"""Saving and deleting a user's job templates (the composer's "Save as template"), each with an audit event.

A template is validated like a submission (jobs.actions._options): what is saved can be submitted as it is,
as far as the portal can tell; Slurm still decides when it is submitted.
"""

from django.db import IntegrityError, transaction

from audit.services import record_event
from clusters.models import ClusterAccount
from jobs import actions, validation
from jobs.models import JobTemplate

MAX_TEMPLATE_NAME = 100


def clean_template_name(raw) -> str:
    name = (raw or "").strip()
    if not name:
        raise validation.JobRequestError("template_name", "is required to save a template.")
    if len(name) > MAX_TEMPLATE_NAME:
        raise validation.JobRequestError("template_name", f"is {len(name)} characters long; template names are limited to "
                                                          f"{MAX_TEMPLATE_NAME}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise validation.JobRequestError("template_name", "must not contain control characters.")
    return name


def template_fields(account: ClusterAccount, request: actions.SubmitRequest) -> dict:
    """The request, validated, as JobTemplate's fields (environment values are not kept)."""
    options, script_path, stdin = actions._options(account, request)
    return {
        "options": {name: getattr(options, name) for name in actions.OPTION_FIELDS},
        "working_directory": options.working_directory if request.working_directory else "",
        "script_path": script_path or "", "script": request.script if stdin is not None else "",
    }


def save_template(account: ClusterAccount, name: str, request: actions.SubmitRequest, *, actor, client_address=None,
                  from_job: str | None = None) -> JobTemplate:
    """A new template of `actor` on the account's cluster; JobRequestError (field template_name) if the name is taken."""
    name = clean_template_name(name)
    fields = template_fields(account, request)
    try:
        with transaction.atomic():  # the template and its audit event, or neither
            template = JobTemplate.objects.create(cluster=account.cluster, owner=actor, name=name, **fields)
            record_event("job_template.save", tenant=account.cluster.tenant, actor=actor, target=template,
                         client_address=client_address,
                         data={"cluster": account.cluster.slug, "name": name, "script_path": template.script_path,
                               "inline": bool(template.script), "from_job": from_job or ""})
    except IntegrityError:
        raise validation.JobRequestError("template_name", f"“{name}” is already one of your templates on "
                                                          f"{account.cluster.name}: choose another name, or delete that one first.") from None
    return template


def free_name(account: ClusterAccount, owner, base: str) -> str:
    """`base`, or `base (2)`, `base (3)`… : the first name none of the owner's templates on the cluster has."""
    base = base.strip()[: MAX_TEMPLATE_NAME - 6] or "Template"
    taken = set(JobTemplate.objects.filter(cluster=account.cluster, owner=owner, name__startswith=base).values_list("name", flat=True))
    candidates = [base, *(f"{base} ({n})" for n in range(2, len(taken) + 2))]
    return next(candidate for candidate in candidates if candidate not in taken)


def delete_template(template: JobTemplate, *, actor, client_address=None) -> None:
    with transaction.atomic():
        record_event("job_template.delete", tenant=template.cluster.tenant, actor=actor, target=template,
                     client_address=client_address, data={"cluster": template.cluster.slug, "name": template.name})
        template.delete()
