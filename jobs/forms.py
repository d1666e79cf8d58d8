"""The job composer's form (jobs/composer.py).

jobs.validation stays the authority: this form only reads the fields into a jobs.actions.SubmitRequest,
and its HTML attributes mirror the server's rules so a browser can say most problems before sending.
No field has a maxlength (a browser silently cuts what is typed or pasted at maxlength): a value that is too
long gets the server's message, and pattern/title or the composer's script say it in the browser first.
"""

from django import forms

from clusterra.durations import slurm_duration
from jobs import actions, validation
from jobs.templates_actions import MAX_TEMPLATE_NAME

PATH_MODE, INLINE_MODE = "path", "inline"


def _text(label, help_text="", *, pattern=None, title=None, max_chars=None, **attrs):
    if pattern is not None:
        attrs.update(pattern=pattern, title=title)
    if max_chars is not None:
        attrs["data-max-chars"] = max_chars  # composer.js says "N characters; at most M" as one types
    attrs.setdefault("autocomplete", "off")
    return forms.CharField(label=label, help_text=help_text, required=False, widget=forms.TextInput(attrs=attrs))


def _choice(label, field, help_text=""):
    regex, example = validation.PATTERNS[field]
    return _text(label, help_text, pattern=validation.html_pattern(regex), title=f"For example {example}", spellcheck="false")


def _count(label, field, help_text=""):
    # No min_value/max_value validators: jobs.validation.clean_count says what is wrong, in one wording.
    return forms.IntegerField(label=label, help_text=help_text, required=False,
                              widget=forms.NumberInput(attrs={"min": 1, "max": validation.MAX_COUNTS[field], "step": 1}))


_PATH_RULE = dict(pattern=f"/.{{0,{validation.MAX_PATH - 1}}}", spellcheck="false",
                  title=f"An absolute path (starting with /) of at most {validation.MAX_PATH} characters")


class SubmitForm(forms.Form):
    mode = forms.ChoiceField(label="Script", required=False, widget=forms.RadioSelect,
                             choices=[(PATH_MODE, "Script on the cluster"), (INLINE_MODE, "Write a script")])
    script_path = _text("Script path", "The batch script's absolute path on the cluster (your home directory or a "
                        "shared directory).", **_PATH_RULE)
    script = forms.CharField(
        label="Script text", required=False, strip=False,
        help_text=f"Starts with an interpreter line such as #!/bin/bash; at most {validation.MAX_INLINE_SCRIPT_BYTES // 1024} KiB.",
        widget=forms.Textarea(attrs={"class": "mono script-editor", "rows": 18, "spellcheck": "false", "autocapitalize": "off",
                                     "autocomplete": "off", "wrap": "off",
                                     "data-max-bytes": validation.MAX_INLINE_SCRIPT_BYTES}))
    partition = forms.CharField(label="Partition", required=False, widget=forms.Select)
    name = _text("Job name", pattern=f".{{0,{validation.MAX_NAME}}}", title=f"At most {validation.MAX_NAME} characters",
                 max_chars=validation.MAX_NAME)
    time_limit = _choice("Time limit", "time_limit", "Minutes, H:MM:SS or D-HH:MM:SS. Empty: the script's or the partition's default.")
    nodes = _count("Nodes", "nodes")
    ntasks = _count("Tasks", "ntasks")
    cpus_per_task = _count("CPUs per task", "cpus_per_task")
    memory = _choice("Memory per node", "memory", "e.g. 4G (K, M, G or T; megabytes without a unit).")
    gpus = _choice("GPUs", "gpus", "A count, or type:count such as a100:2.")
    qos = _choice("QOS", "qos", "Quality of service. Empty: your default.")
    account = _choice("Slurm account", "account", "The account the job is charged to. Empty: your default.")
    array = _choice("Job array", "array", "Task ids such as 0-9 or 1,3,5; %2 runs at most 2 at a time.")
    dependency = _choice("Dependency", "dependency", "e.g. afterok:123 (start after job 123 succeeded).")
    working_directory = _text("Working directory", "Empty: the script's directory (your home directory for a written script).",
                              **_PATH_RULE)
    template_name = _text("Template name", pattern=f".{{0,{MAX_TEMPLATE_NAME}}}",
                          title=f"At most {MAX_TEMPLATE_NAME} characters", max_chars=MAX_TEMPLATE_NAME)

    def __init__(self, *args, partitions=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.partitions = list(partitions)
        if not self.partitions:  # not polled yet: type a name, Slurm says if it exists
            self.fields["partition"].widget = forms.TextInput(attrs={"pattern": validation.html_pattern(validation.PATTERNS["partition"][0]),
                                                                     "title": "A partition name such as debug", "autocomplete": "off"})
            return
        default = next((p.name for p in self.partitions if p.is_default), None)
        choices = [("", f"Not set: the script's #SBATCH --partition, else {default or 'the cluster default'}")]
        for p in self.partitions:
            notes = [n for n, on in (("default", p.is_default), ("down", not p.available)) if on]
            label = f"{p.name} — time limit {slurm_duration(p.time_limit)}" + (f" ({', '.join(notes)})" if notes else "")
            choices.append((p.name, label))
        current = self.data.get("partition") if self.is_bound else self.initial.get("partition")
        if current and current not in {p.name for p in self.partitions}:
            choices.append((current, f"{current} (not in the last poll of the cluster)"))
        self.fields["partition"].widget.choices = choices

    def clean_script(self):
        # Browsers send a textarea's lines ending in CR LF; bash would read `#!/bin/bash\r` as the interpreter.
        return self.cleaned_data["script"].replace("\r\n", "\n")

    def clean(self):
        data = super().clean()
        mode = data.get("mode") or (INLINE_MODE if data.get("script") and not data.get("script_path") else PATH_MODE)
        data["mode"] = mode
        if mode == PATH_MODE and not data.get("script_path"):
            self.add_error("script_path", "Give the script's path on the cluster, or choose “Write a script”.")
        if mode == INLINE_MODE and not (data.get("script") or "").strip():
            self.add_error("script", "Write the script (starting with #!/bin/bash), or choose “Script on the cluster”.")
        return data

    def submit_request(self) -> actions.SubmitRequest:
        """The cleaned form as a submission: only the chosen kind of script, empty fields as None."""
        data = self.cleaned_data
        fields = {name: data.get(name) for name in (*actions.OPTION_FIELDS, "working_directory")}
        fields = {name: (None if value in ("", None) else value) for name, value in fields.items()}
        if data["mode"] == INLINE_MODE:
            return actions.SubmitRequest(script=data["script"], **fields)
        return actions.SubmitRequest(script_path=data["script_path"], **fields)

    def add_request_error(self, exc: validation.JobRequestError) -> None:
        """The server's verdict next to the field it is about, in a sentence that names the field."""
        field = exc.field if exc.field in self.fields else None
        label = self.fields[field].label if field else exc.field
        if field == "script" and self.cleaned_data.get("mode") != INLINE_MODE:
            field = None
        self.add_error(field, f"{label} {exc.message}")

    @staticmethod
    def initial_from(request: actions.SubmitRequest) -> dict:
        """Form values for a request (a template, a job to resubmit)."""
        values = {name: getattr(request, name) for name in (*actions.OPTION_FIELDS, "working_directory", "script_path", "script")}
        values["mode"] = INLINE_MODE if request.script and not request.script_path else PATH_MODE
        return {name: value for name, value in values.items() if value not in (None, "")}
