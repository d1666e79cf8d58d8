"""The job composer in Debian's Chromium (Playwright), under the Content-Security-Policy, on the live Slurm.

At a desktop (1200x800) and a phone (390x844) width: pick a partition and its starter script appears (but
never over the user's own text), a too-long name is said while typing and not cut, the pattern attributes
really work in the browser, save the form as a template, submit a job from that template, resubmit it from
the job's page; the page never scrolls sideways on the phone.
"""

import pytest

from jobs import validation
from jobs.models import Job, JobSubmission, JobTemplate
from jobs.services import refresh_partitions
from tests.test_browser import _in_thread, chromium_page, sign_in
from tests.test_browser_csp import _until, watch_console

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.slurm]

SUBMIT = "/t/acme/c/hpc/jobs/submit/"
_EDITOR = "() => document.querySelector('#id_script').value"
_NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"

# For each pattern-checked field: a value the server accepts and one it refuses.
_SAMPLES = {"time_limit": ("1:30:00", "soon"), "memory": ("4G", "4 GB"), "gpus": ("a100:2", "two"), "qos": ("normal", "no qos"),
            "account": ("physics", "-x"), "array": ("0-9%2", "1..9"), "dependency": ("afterok:123", "after 123")}


def test_compose_save_template_submit_and_resubmit(slurm_cast, live_daphne, tmp_path):
    c = slurm_cast
    refresh_partitions(c.hpc)  # the cached partitions the picker offers: debug (default, 2:00:00) and batch
    with chromium_page(bypass_csp=False) as page:
        console = watch_console(page)
        sign_in(page, live_daphne, SUBMIT)

        for width, height in ((1200, 800), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            _compose_and_resubmit(page, live_daphne, c, f"browser {width}", tmp_path)
        assert page.evaluate("() => window.__csp") == [], console
        assert not [line for line in console if "pageerror" in line or "Refused to" in line], console


def _compose_and_resubmit(page, base, c, template_name, tmp_path):
    page.goto(f"{base}{SUBMIT}")
    assert page.evaluate(_NO_SIDEWAYS_SCROLL), f"the composer scrolls sideways at {page.viewport_size}"
    page.screenshot(path=str(tmp_path / f"composer-{page.viewport_size['width']}.png"), full_page=True)  # to look at
    # Patterns the browser could not compile would be ignored: each must accept and refuse like the server.
    for field, (good, bad) in _SAMPLES.items():
        mismatch = page.evaluate("([id, value]) => { const input = document.getElementById(id); input.value = value;"
                                 " const result = input.validity.patternMismatch; input.value = ''; return result; }", [f"id_{field}", bad])
        assert mismatch, f"the browser accepted {bad!r} for {field}"
        assert not page.evaluate("([id, value]) => { const input = document.getElementById(id); input.value = value;"
                                 " const result = input.validity.patternMismatch; input.value = ''; return result; }", [f"id_{field}", good])

    # "Write a script": the editor shows, with the default partition's starter; batch's replaces it.
    assert not page.locator("#id_script").is_visible()
    page.check("#id_mode_1")
    assert page.locator("#id_script").is_visible() and not page.locator("#id_script_path").is_visible()
    assert "#SBATCH --partition=debug\n#SBATCH --time=2:00:00\n" in page.evaluate(_EDITOR)
    page.select_option("#id_partition", "batch")
    _until(page, f"() => ({_EDITOR})().includes('#SBATCH --partition=batch\\n#SBATCH --time=2-00:00:00\\n')",
           what="batch's starter script")
    # The user's own script stays when another partition is picked.
    script = f"#!/bin/bash\n#SBATCH --time=5\necho from {template_name}\nsleep 30\n"
    page.fill("#id_script", script)
    page.select_option("#id_partition", "debug")
    page.select_option("#id_partition", "batch")
    assert page.evaluate(_EDITOR) == script

    # A name one character too long: said at once, nothing cut, nothing sent.
    page.fill("#id_name", "n" * (validation.MAX_NAME + 1))
    assert page.locator("#id_name").input_value() == "n" * (validation.MAX_NAME + 1)
    note = page.locator("#id_name ~ .field-live-error")
    assert note.is_visible() and note.inner_text() == f"Job name is {validation.MAX_NAME + 1} characters long; at most {validation.MAX_NAME}."
    assert not page.evaluate("() => document.querySelector('form.composer').checkValidity()")
    page.fill("#id_name", template_name)
    assert not note.is_visible()

    # Save as template: Enter in its name saves (it does not submit the job).
    page.fill("#id_template_name", template_name)
    with page.expect_navigation():
        page.press("#id_template_name", "Enter")
    template = _in_thread(lambda: JobTemplate.objects.get(owner=c.bob, name=template_name))
    assert page.url.endswith(f"{SUBMIT}?template={template.pk}") and template.script == script
    assert f"Saved the template “{template_name}”." in page.locator(".messages").inner_text()
    assert not _in_thread(lambda: Job.objects.filter(name=template_name).exists())

    # Submit from the saved template, chosen in the list.
    page.goto(f"{base}{SUBMIT}")
    row = page.locator("table.composer-templates tr", has_text=template_name)
    with page.expect_navigation():
        row.get_by_role("link", name="Use").click()
    assert page.locator("#id_mode_1").is_checked() and page.evaluate(_EDITOR) == script
    assert page.locator("#id_partition").input_value() == "batch" and page.locator("#id_name").input_value() == template_name
    assert page.evaluate(_NO_SIDEWAYS_SCROLL)
    with page.expect_navigation():
        page.click("#submit-job")
    first = _in_thread(lambda: Job.objects.get(owner__user=c.bob, name=template_name))
    assert page.url.endswith(f"/jobs/{first.job_id}/") and f"Submitted job {first.job_id}." in page.locator(".messages").inner_text()
    assert first.partition == "batch" and first.time_limit == 300  # the script's own #SBATCH --time=5
    page.screenshot(path=str(tmp_path / f"job-{page.viewport_size['width']}.png"))
    assert page.evaluate(_NO_SIDEWAYS_SCROLL), f"the job page scrolls sideways at {page.viewport_size}"

    # Resubmit from the job's page: the composer holds what was asked; submitting makes a second job.
    with page.expect_navigation():
        page.get_by_role("link", name="Resubmit").click()
    assert f"Resubmitting job {first.job_id}." in page.locator(".composer-note").inner_text()
    assert page.evaluate(_EDITOR) == script and page.locator("#id_partition").input_value() == "batch"
    page.screenshot(path=str(tmp_path / f"composer-{page.viewport_size['width']}.png"), full_page=True)
    with page.expect_navigation():
        page.click("#submit-job")
    second = _in_thread(lambda: Job.objects.exclude(pk=first.pk).get(owner__user=c.bob, name=template_name))
    assert page.url.endswith(f"/jobs/{second.job_id}/")
    assert _in_thread(lambda: JobSubmission.objects.get(job=second).script) == script
