"""The job composer (jobs/composer.py): the form, its mirrored validation, templates and resubmit.

Submissions go to the live Slurm (scripts/slurm-local.sh) as the tests' POSIX users; the pages are read
as HTML the way a browser gets them (tests/test_browser_composer.py drives a real one).
"""

import html
import re
import shutil
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from clusters.executors import LocalExecutor
from jobs import actions, slurm, validation
from jobs.models import Job, JobSubmission, JobTemplate, Partition
from jobs.services import refresh_jobs, refresh_partitions

pytestmark = pytest.mark.django_db

SUBMIT = "/t/acme/c/hpc/jobs/submit/"


class Form(HTMLParser):
    """The composer form's controls as a browser sees them: attributes, values, options."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.controls: dict[str, dict] = {}
        self.options: dict[str, list[dict]] = {}
        self._select = self._textarea = None
        self._in_option = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("type") == "radio":
            self.controls.setdefault(attrs["name"], {"radios": {}})["radios"][attrs["value"]] = "checked" in attrs
        elif tag == "input" and "name" in attrs:
            self.controls[attrs["name"]] = attrs
        elif tag == "select":
            self._select = attrs["name"]
            self.controls[self._select] = attrs
            self.options[self._select] = []
        elif tag == "option" and self._select:
            self.options[self._select].append({"value": attrs.get("value"), "selected": "selected" in attrs, "label": ""})
            self._in_option = True
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.controls[self._textarea] = {**attrs, "value": ""}

    def handle_endtag(self, tag):
        if tag == "option":
            self._in_option = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":  # as in a browser, a newline right after <textarea> is not part of the text
            self.controls[self._textarea]["value"] = self.controls[self._textarea]["value"].removeprefix("\n")
            self._textarea = None

    def handle_data(self, data):
        if self._in_option:
            self.options[self._select][-1]["label"] += data
        elif self._textarea:
            self.controls[self._textarea]["value"] += data

    def value(self, name):
        control = self.controls[name]
        if "radios" in control:
            return next((value for value, checked in control["radios"].items() if checked), None)
        if name in self.options:
            return next((o["value"] for o in self.options[name] if o["selected"]), None)
        return control.get("value", "")

    def post_data(self, **changes) -> dict:
        """What submitting the form as it is (with `changes`) sends."""
        data = {name: self.value(name) for name in self.controls if name != "csrfmiddlewaretoken"}
        data.update(changes)
        return {name: value for name, value in data.items() if value is not None}


def field_errors(page: str, field: str) -> list[str]:
    """The server's errors shown with a field (Django's errorlist next to its input)."""
    match = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', page, re.DOTALL)
    return [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", match[1], re.DOTALL)] if match else []


def page_errors(page: str) -> list[str]:
    """Errors of the form as a whole (Slurm's refusal, Slurm unavailable)."""
    return [html.unescape(e) for e in re.findall(r'<li class="error" role="alert">(.*?)</li>', page, re.DOTALL)]


@pytest.fixture
def partitions(cast):
    now = timezone.now()
    Partition.objects.create(cluster=cast.hpc, name="debug", is_default=True, time_limit=7200, cpus_total=8, nodes_total=1, updated_at=now)
    Partition.objects.create(cluster=cast.hpc, name="batch", time_limit=2 * 86400, cpus_total=8, nodes_total=1, available=False,
                             updated_at=now)
    return cast


# --- the form ------------------------------------------------------------------------------------
def test_form_offers_the_cached_partitions_with_their_limits_and_a_starter(client, partitions):
    client.force_login(partitions.bob)
    page = client.get(SUBMIT).content.decode()
    form = Form(page)
    assert [(o["value"], o["label"], o["selected"]) for o in form.options["partition"]] == [
        ("", "Not set: the script's #SBATCH --partition, else debug", False),
        ("debug", "debug — time limit 2:00:00 (default)", True),
        ("batch", "batch — time limit 2-00:00:00 (down)", False),
    ]
    for label in ("Tasks", "CPUs per task", "GPUs", "QOS", "Memory per node", "Time limit", "Job array", "Dependency",
                  "Working directory", "Script path", "Job name", "Nodes", "Slurm account", "Template name"):
        assert f">{label}:</label>" in page, label
    assert form.value("mode") == "path" and form.value("script_path") == f"{partitions.posix.pw_dir}/"
    assert form.controls["mode"]["radios"] == {"path": True, "inline": False}
    # The editor holds the default partition's starter; the others are in the page for composer.js.
    starter = form.value("script")
    assert starter.startswith("#!/bin/bash\n#SBATCH --partition=debug\n#SBATCH --time=2:00:00\n")
    assert "2-00:00:00" not in starter and "#SBATCH --time=2-00:00:00" in page  # batch's, in the JSON for the picker
    assert 'src="/static/js/composer.js"' in page and "cdn" not in page.lower()


def test_validation_attributes_mirror_the_server(client, partitions):
    client.force_login(partitions.bob)
    form = Form(client.get(SUBMIT).content.decode())
    assert not [name for name, attrs in form.controls.items() if "maxlength" in attrs]  # nothing is cut while typing
    assert "maxlength" not in form.controls["script"]
    for field, (regex, example) in validation.PATTERNS.items():
        if field == "partition":
            continue  # a select of the cached partitions
        pattern = form.controls[field]["pattern"]
        assert pattern == validation.html_pattern(regex) and example in form.controls[field]["title"]
        # The browser anchors the pattern; it accepts and refuses what the server does.
        anchored = re.compile(f"^(?:{pattern})$")
        for sample in [example.split(" ")[0], "soon", "1:30:00", "4G", "a100:2", "0-9%2", "afterok:123", "x y", ""]:
            assert bool(anchored.match(sample)) == bool(regex.match(sample)), (field, sample)
    for field, most in validation.MAX_COUNTS.items():
        assert (form.controls[field]["type"], form.controls[field]["min"], form.controls[field]["max"]) == ("number", "1", str(most))
    assert form.controls["name"]["data-max-chars"] == str(validation.MAX_NAME)
    assert form.controls["script"]["data-max-bytes"] == str(validation.MAX_INLINE_SCRIPT_BYTES)


def test_a_too_long_name_is_an_error_next_to_the_field_never_cut(client, partitions):
    client.force_login(partitions.bob)
    form = Form(client.get(SUBMIT).content.decode())
    long_name = "n" * (validation.MAX_NAME + 1)
    response = client.post(SUBMIT, form.post_data(script_path=f"{partitions.posix.pw_dir}/run.sh", name=long_name))
    page = response.content.decode()
    assert response.status_code == 200
    assert field_errors(page, "name") == [f"Job name is {validation.MAX_NAME + 1} characters long; job names are limited to "
                                          f"{validation.MAX_NAME}."]
    assert Form(page).value("name") == long_name  # given back whole, to shorten
    assert not Job.objects.exists()

    # Every server check lands next to its field, in a sentence that names it.
    cases = [
        ({"time_limit": "soon"}, "time_limit", "Time limit 'soon' is not valid (example: 30, 1:30:00 or 2-00:00:00)."),
        ({"nodes": "0"}, "nodes", "Nodes must be a whole number from 1 to 10000."),
        ({"ntasks": "1000001"}, "ntasks", "Tasks must be a whole number from 1 to 1000000."),
        ({"gpus": "lots"}, "gpus", "GPUs 'lots' is not valid (example: 1 or a100:2)."),
        ({"script_path": "/etc/passwd"}, "script_path", f"Script path must be inside {partitions.posix.pw_dir}."),
        ({"script_path": "/" + "p" * validation.MAX_PATH}, "script_path",
         f"Script path is {validation.MAX_PATH + 1} characters long; paths are limited to {validation.MAX_PATH}."),
        ({"script_path": ""}, "script_path", "Give the script's path on the cluster, or choose “Write a script”."),
        ({"mode": "inline", "script": "echo no interpreter\n"}, "script",
         "Script text must start with an interpreter line such as #!/bin/bash."),
        ({"mode": "inline", "script": "#!/bin/bash\n" + "#" * validation.MAX_INLINE_SCRIPT_BYTES}, "script",
         f"Script text is {validation.MAX_INLINE_SCRIPT_BYTES + 12} bytes; inline scripts are limited to 256 KiB (use script_path)."),
    ]
    for changes, field, message in cases:
        page = client.post(SUBMIT, form.post_data(**{"script_path": f"{partitions.posix.pw_dir}/run.sh", **changes})).content.decode()
        assert field_errors(page, field) == [message], (changes, page_errors(page))
    assert not Job.objects.exists()


def test_script_path_prefill_from_the_file_browser(client, partitions):
    client.force_login(partitions.bob)
    path = f"{partitions.posix.pw_dir}/proj/run me.sh"
    form = Form(client.get(SUBMIT, {"script_path": path}).content.decode())
    assert form.value("script_path") == path and form.value("mode") == "path"
    assert form.value("partition") == ""  # the script's own #SBATCH --partition decides, unless one is picked


def test_no_account_or_other_tenant(client, partitions):
    client.force_login(partitions.rita)  # revoked account
    assert client.get(SUBMIT).status_code == 403
    client.force_login(partitions.charlie)
    assert client.get(SUBMIT).status_code == 404
    assert client.post("/t/acme/c/hpc/jobs/submit/templates/", {"template_name": "x"}).status_code == 404


# --- templates -----------------------------------------------------------------------------------
def test_save_use_and_delete_templates_only_your_own(client, partitions):
    c = partitions
    client.force_login(c.bob)
    form = Form(client.get(SUBMIT).content.decode())
    data = form.post_data(script_path=f"{c.posix.pw_dir}/nightly.sh", partition="batch", time_limit="90", ntasks="4",
                          template_name="  Nightly run ")
    response = client.post("/t/acme/c/hpc/jobs/submit/templates/", data)
    template = JobTemplate.objects.get(cluster=c.hpc, owner=c.bob)
    assert response.status_code == 302 and response["Location"] == f"{SUBMIT}?template={template.pk}"
    assert template.name == "Nightly run" and template.script_path == f"{c.posix.pw_dir}/nightly.sh" and template.script == ""
    assert template.options["partition"] == "batch" and template.options["ntasks"] == 4 and template.options["time_limit"] == "90"
    event = AuditEvent.objects.get(action="job_template.save")
    assert event.actor == c.bob and event.tenant == c.acme and event.target_id == str(template.pk)
    assert event.data["name"] == "Nightly run" and event.data["cluster"] == "hpc"

    page = client.get(response["Location"]).content.decode()
    prefilled = Form(page)
    assert prefilled.value("script_path") == template.script_path and prefilled.value("partition") == "batch"
    assert prefilled.value("ntasks") == "4" and prefilled.value("time_limit") == "90"
    assert "From your template “Nightly run”." in html.unescape(page)
    assert "<td data-label=\"Time limit\">1:30:00</td>" in page  # 90 minutes, as Slurm writes it

    # The same name again: an error next to the name, nothing overwritten; a too-long name is an error too.
    again = client.post("/t/acme/c/hpc/jobs/submit/templates/", {**data, "script_path": f"{c.posix.pw_dir}/other.sh"}).content.decode()
    assert field_errors(again, "template_name") == ["Template name “Nightly run” is already one of your templates on Acme HPC: "
                                                    "choose another name, or delete that one first."]
    long_name = client.post("/t/acme/c/hpc/jobs/submit/templates/", {**data, "template_name": "t" * 101}).content.decode()
    assert field_errors(long_name, "template_name") == ["Template name is 101 characters long; template names are limited to 100."]
    bad = client.post("/t/acme/c/hpc/jobs/submit/templates/", {**data, "template_name": "x", "script_path": "/etc/x.sh"}).content.decode()
    assert field_errors(bad, "script_path") == [f"Script path must be inside {c.posix.pw_dir}."]
    assert list(JobTemplate.objects.values_list("name", "script_path")) == [("Nightly run", f"{c.posix.pw_dir}/nightly.sh")]

    # alice (same tenant, same cluster) neither sees, uses nor deletes bob's template.
    client.force_login(c.alice)
    assert "Nightly run" not in client.get(SUBMIT).content.decode()
    assert client.get(SUBMIT, {"template": template.pk}).status_code == 404
    assert client.post(f"/t/acme/c/hpc/jobs/submit/templates/{template.pk}/delete/").status_code == 404
    # charlie's template in the other tenant is not bob's to use, even by its number.
    other = JobTemplate.objects.create(cluster=c.other_hpc, owner=c.charlie, name="theirs", script_path="/home/x/a.sh")
    client.force_login(c.bob)
    assert client.get(SUBMIT, {"template": other.pk}).status_code == 404
    assert client.get(SUBMIT, {"template": "1 OR 1=1"}).status_code == 404
    assert client.get(SUBMIT, {"template": "9" * 30}).status_code == 404  # beyond a bigint: not a 500
    assert client.post(f"/t/acme/c/hpc/jobs/submit/templates/{'9' * 30}/delete/").status_code == 404
    assert client.get(SUBMIT, {"from_job": "1\x00"}).status_code == 404
    assert client.post(f"/t/acme/c/hpc/jobs/submit/templates/{other.pk}/delete/").status_code == 404
    client.force_login(c.charlie)
    assert client.get("/t/other/c/hpc/jobs/submit/", {"template": template.pk}).status_code == 404
    assert "theirs" in client.get("/t/other/c/hpc/jobs/submit/").content.decode()

    client.force_login(c.bob)
    deleted = client.post(f"/t/acme/c/hpc/jobs/submit/templates/{template.pk}/delete/", follow=True)
    assert "Deleted the template “Nightly run”." in html.unescape(deleted.content.decode())
    assert not JobTemplate.objects.filter(pk=template.pk).exists() and JobTemplate.objects.filter(pk=other.pk).exists()
    assert AuditEvent.objects.get(action="job_template.delete").data == {"cluster": "hpc", "name": "Nightly run"}


# --- on the live Slurm ---------------------------------------------------------------------------
def _sbatch_in_terminal(account, script_path: str | None, script: str, **options) -> str:
    """sbatch as the user, the way they would in a terminal (not through the portal)."""
    home = f"/home/{account.posix_username}"
    if script_path:
        written = LocalExecutor().run(account, ["sh", "-c", 'cat > "$1"', "sh", script_path], stdin=script.encode(), timeout=30)
        assert written.ok, written.error_text()
    argv = slurm.sbatch_argv(slurm.SubmitOptions(working_directory=home, **options), script_path)
    result = LocalExecutor().run(account, argv, stdin=None if script_path else script.encode(), env=slurm.SLURM_ENV, timeout=30)
    assert result.ok, result.error_text()
    return slurm.parse_sbatch(result.stdout)


def _scontrol(account, job_id: str) -> dict[str, str]:
    record = actions._scontrol_record(account, job_id)
    assert record is not None, f"scontrol does not know job {job_id}"
    return record


def _open_composer(client, c) -> Form:
    """bob's composer, with the live cluster's partitions in the cache."""
    refresh_partitions(c.hpc)
    client.force_login(c.bob)
    return Form(client.get(SUBMIT).content.decode())


@pytest.mark.slow
@pytest.mark.slurm
def test_inline_script_submitted_and_resubmitted_as_asked(client, slurm_cast):
    c = slurm_cast
    form = _open_composer(client, c)
    script = "#!/bin/bash\n#SBATCH --output=composed-%j.out\necho composed by $(whoami)\nsleep 60\n"
    # Sent the way a browser sends a textarea: lines end in CR LF (bash would not run `#!/bin/bash\r`).
    response = client.post(SUBMIT, form.post_data(mode="inline", script=script.replace("\n", "\r\n"), partition="batch", name="composed ✓",
                                                   time_limit="5", cpus_per_task="1"))
    assert response.status_code == 302, page_errors(response.content.decode())
    job = Job.objects.get(cluster=c.hpc, name="composed ✓")
    assert response["Location"] == f"/t/acme/c/hpc/jobs/{job.job_id}/"
    assert job.owner == c.bob_account and job.partition == "batch" and job.time_limit == 300
    assert job.stdout_path == f"{c.posix.pw_dir}/composed-{job.job_id}.out"  # the script's own #SBATCH line counted
    submission = JobSubmission.objects.get(job=job)
    assert submission.script == script and submission.script_path == "" and submission.working_directory == ""
    assert submission.options["partition"] == "batch" and submission.options["time_limit"] == "5"
    assert submission.options["memory"] is None  # not asked: not made up on resubmit either
    assert AuditEvent.objects.filter(action="job.submit", target_id=str(job.pk), data__inline=True).exists()

    # Resubmit from the job's page: the same script and options, as they were asked.
    detail = client.get(response["Location"]).content.decode()
    assert f'href="{SUBMIT}?from_job={job.job_id}">Resubmit</a>' in detail
    page = client.get(SUBMIT, {"from_job": job.job_id}).content.decode()
    again = Form(page)
    assert f"Resubmitting job {job.job_id}." in page
    assert again.value("mode") == "inline" and again.value("script") == script
    assert (again.value("partition"), again.value("name"), again.value("time_limit"), again.value("cpus_per_task")) == (
        "batch", "composed ✓", "5", "1")
    second = client.post(SUBMIT, again.post_data())
    assert second.status_code == 302, page_errors(second.content.decode())
    twin = Job.objects.exclude(pk=job.pk).get(cluster=c.hpc, name="composed ✓")
    assert twin.partition == "batch" and twin.time_limit == 300 and JobSubmission.objects.get(job=twin).script == script

    # Not someone else's job: alice (an admin who may see it) cannot resubmit or copy it.
    client.force_login(c.alice)
    assert client.get(f"/t/acme/c/hpc/jobs/{job.job_id}/").status_code == 200
    assert client.get(SUBMIT, {"from_job": job.job_id}).status_code == 404
    assert client.post(f"/t/acme/c/hpc/jobs/{job.job_id}/save-template/").status_code == 404

    # "Save as template" on the job's page: named after the job, the script kept.
    client.force_login(c.bob)
    saved = client.post(f"/t/acme/c/hpc/jobs/{job.job_id}/save-template/")
    template = JobTemplate.objects.get(owner=c.bob, cluster=c.hpc)
    assert saved["Location"] == f"{SUBMIT}?template={template.pk}"
    assert template.name == "composed ✓" and template.script == script and template.options["partition"] == "batch"
    client.post(f"/t/acme/c/hpc/jobs/{job.job_id}/save-template/")
    assert sorted(JobTemplate.objects.filter(owner=c.bob).values_list("name", flat=True)) == ["composed ✓", "composed ✓ (2)"]
    assert AuditEvent.objects.filter(action="job_template.save", data__from_job=job.job_id).count() == 2


@pytest.mark.slow
@pytest.mark.slurm
def test_resubmit_a_job_submitted_from_the_terminal(client, slurm_cast):
    c = slurm_cast
    refresh_partitions(c.hpc)
    path = f"{c.posix.pw_dir}/terminal-{time.monotonic_ns()}.sh"
    job_id = _sbatch_in_terminal(c.bob_account, path, "#!/bin/bash\nsleep 60\n", name="by hand", partition="batch",
                                 time_limit="7", ntasks=2, memory="100M")
    refresh_jobs(c.hpc)
    job = Job.objects.get(cluster=c.hpc, job_id=job_id)
    assert not JobSubmission.objects.filter(job=job).exists()
    client.force_login(c.bob)
    form = Form(client.get(SUBMIT, {"from_job": job_id}).content.decode())
    # What Slurm knows of it: Command= is the script, and the options it ran with.
    assert (form.value("mode"), form.value("script_path"), form.value("working_directory")) == ("path", path, c.posix.pw_dir)
    assert (form.value("partition"), form.value("name"), form.value("time_limit"), form.value("ntasks"), form.value("memory")) == (
        "batch", "by hand", "00:07:00", "2", "100M")
    response = client.post(SUBMIT, form.post_data())
    assert response.status_code == 302, page_errors(response.content.decode())
    new_id = response["Location"].rstrip("/").rsplit("/", 1)[1]
    record = _scontrol(c.bob_account, new_id)
    assert (record["Command"], record["Partition"], record["TimeLimit"], record["NumTasks"], record["JobName"]) == (
        path, "batch", "00:07:00", "2", "by hand")

    # The job page's "Save as template" keeps the terminal job's script path.
    client.post(f"/t/acme/c/hpc/jobs/{job_id}/save-template/")
    template = JobTemplate.objects.get(owner=c.bob, name="by hand")
    assert template.script_path == path and template.options["ntasks"] == 2 and template.options["memory"] == "100M"

    # A script piped into sbatch is not kept by Slurm: the settings come back, the script is to be chosen.
    piped = _sbatch_in_terminal(c.bob_account, None, "#!/bin/bash\nsleep 60\n", name="piped", partition="batch", time_limit="3")
    refresh_jobs(c.hpc)
    page = client.get(SUBMIT, {"from_job": piped}).content.decode()
    assert "Its script came on standard input, which Slurm does not keep" in page
    assert Form(page).value("name") == "piped" and Form(page).value("time_limit") == "00:03:00"
    refused = client.post(f"/t/acme/c/hpc/jobs/{piped}/save-template/", follow=True).content.decode()
    assert f"Slurm does not say which script job {piped} ran" in html.unescape(refused)

    # A job slurmctld has forgotten: what the job cache holds.
    gone = Job.objects.create(cluster=c.hpc, job_id="999998", owner=c.bob_account, posix_user=c.posix.pw_name, name="long gone",
                              partition="batch", state="COMPLETED", time_limit=5400, nodes=1, cpus=4, work_dir=c.posix.pw_dir,
                              in_queue=False, last_seen_at=timezone.now())
    page = client.get(SUBMIT, {"from_job": gone.job_id}).content.decode()
    form = Form(page)
    assert "Slurm no longer remembers it: the settings below come from the job list; choose the script." in page
    assert (form.value("name"), form.value("time_limit"), form.value("cpus_per_task"), form.value("working_directory")) == (
        "long gone", "1:30:00", "4", c.posix.pw_dir)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurms_refusal_is_shown_once_in_words(client, slurm_cast):
    c = slurm_cast
    form = _open_composer(client, c)
    page = client.post(SUBMIT, form.post_data(mode="inline", script="#!/bin/sh\ntrue\n", partition="nosuch")).content.decode()
    assert page_errors(page) == ["Slurm refused the job: Invalid partition name specified (invalid partition specified: nosuch)"]
    assert page.count("Invalid partition name specified") == 1 and "sbatch:" not in page and "error:" not in page
    assert Form(page).value("script") == "#!/bin/sh\ntrue\n"  # the user's work is kept
    too_long = client.post(SUBMIT, form.post_data(mode="inline", script="#!/bin/sh\ntrue\n", partition="debug",
                                                  time_limit="3:00:00")).content.decode()
    assert page_errors(too_long) == ["Slurm refused the job: Requested time limit is invalid (missing or exceeds some limit)"]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_unavailable_is_a_503_that_keeps_the_form(client, slurm_cast, monkeypatch, request):
    """A controller that does not answer, without stopping the shared one (tests/test_slurm_down.py does
    that): the real sbatch with a copy of slurm.conf whose controller port nothing listens on."""
    c = slurm_cast
    conf = Path("/etc/slurm/slurm.conf").read_text()
    down = Path(tempfile.mkdtemp(prefix="clusterra-slurm-down-"))  # in /tmp: the job's POSIX user must read it
    down.chmod(0o755)
    (down / "slurm.conf").write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=1", conf))
    (down / "slurm.conf").chmod(0o644)
    monkeypatch.setattr(slurm, "SLURM_ENV", {**slurm.SLURM_ENV, "SLURM_CONF": str(down / "slurm.conf")})
    request.addfinalizer(lambda: shutil.rmtree(down))
    client.force_login(c.bob)
    form = Form(client.get(SUBMIT).content.decode())
    response = client.post(SUBMIT, form.post_data(mode="inline", script="#!/bin/sh\ntrue\n", name="during the outage"))
    page = response.content.decode()
    assert response.status_code == 503
    assert page_errors(page) == ["Slurm on Acme HPC is not answering (slurmctld unreachable: sbatch: error: Batch job submission "
                                 "failed: Unable to contact slurm controller (connect failure)). Nothing was submitted; try "
                                 "again in a minute."]
    assert Form(page).value("name") == "during the outage" and not Job.objects.filter(name="during the outage").exists()


@pytest.mark.parametrize("stderr, said", [
    (b"sbatch: error: invalid partition specified: nosuch\nsbatch: error: Batch job submission failed: Invalid partition name specified\n",
     "Invalid partition name specified (invalid partition specified: nosuch)"),
    (b"sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n",
     "Invalid account or account/partition combination specified"),
    (b"sbatch: error: Unable to open file /home/x/missing.sh\n", "Unable to open file /home/x/missing.sh"),
    (b"sbatch: error: Invalid --mem specification\nsbatch: error: invalid --mem specification\n", "Invalid --mem specification"),
    (b"", ""),
])
def test_sbatch_refusals_in_words_said_once(stderr, said):
    assert slurm.refusal_text(stderr) == said
