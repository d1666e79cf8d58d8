"""Validation of job requests at the edge: paths, names and sizes, with messages fit for the user.

Whatever passes here is still run as the user, so POSIX permissions and Slurm decide the rest.
"""

import posixpath
import re

MAX_INLINE_SCRIPT_BYTES = 256 * 1024
MAX_PATH = 4096
MAX_NAME = 200
# The largest node, task and CPU-per-task counts a request may ask for (the web form's max= too).
MAX_COUNTS = {"nodes": 10_000, "ntasks": 1_000_000, "cpus_per_task": 10_000}

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")  # partition, account, qos
_TIME = re.compile(r"^(UNLIMITED|\d{1,7}|\d{1,7}:\d{2}(:\d{2})?|\d{1,4}-\d{1,2}(:\d{2}(:\d{2})?)?)$")
_MEMORY = re.compile(r"^\d{1,9}[KMGT]?$")
_GPUS = re.compile(r"^([A-Za-z0-9_-]{1,32}:)?\d{1,4}$")
_ARRAY = re.compile(r"^\d{1,7}(-\d{1,7}(:\d{1,7})?)?(,\d{1,7}(-\d{1,7}(:\d{1,7})?)?)*(%\d{1,6})?$")
_DEPENDENCY = re.compile(r"^(singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d{1,10}(_\d{1,7})?(\+\d+)?)+)([,?](singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:\d{1,10}(_\d{1,7})?(\+\d+)?)+))*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_ENV = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")
_RESERVED_ENV_NAMES = {"HOME", "USER", "LOGNAME", "SHELL"}


class JobRequestError(ValueError):
    """A bad job request; `field` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def clean_path(field: str, raw: str, allowed_roots: list[str]) -> str:
    """An absolute, normalised path inside one of `allowed_roots`."""
    if not isinstance(raw, str) or not raw:
        raise JobRequestError(field, "is required.")
    if len(raw) > MAX_PATH:
        raise JobRequestError(field, f"is {len(raw)} characters long; paths are limited to {MAX_PATH}.")
    if "\x00" in raw or "\n" in raw:
        raise JobRequestError(field, "is not a valid path.")
    if not raw.startswith("/"):
        raise JobRequestError(field, f"must be an absolute path, got {raw!r}.")
    normalised = posixpath.normpath(raw)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if normalised != raw.rstrip("/") and raw != "/":
        raise JobRequestError(field, f"must be a normalised path without '.', '..' or '//' (did you mean {normalised}?).")
    for root in allowed_roots:
        root = root.rstrip("/") or "/"
        if normalised == root or normalised.startswith(root + "/") or root == "/":
            return normalised
    raise JobRequestError(field, f"must be inside {' or '.join(allowed_roots)}.")


def clean_choice(field: str, value, pattern: re.Pattern, example: str):
    if value is None or value == "":
        return None
    value = str(value)
    if not pattern.match(value):
        raise JobRequestError(field, f"{value!r} is not valid (example: {example}).")
    return value


def clean_count(field: str, value, maximum: int):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise JobRequestError(field, f"must be a whole number from 1 to {maximum}.")
    return value


def clean_name(value):
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME:
        raise JobRequestError("name", f"is {len(value)} characters long; job names are limited to {MAX_NAME}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise JobRequestError("name", "must not contain control characters (such as a tab or a newline).")
    return value


def clean_environment(env) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict) or len(env) > 100:
        raise JobRequestError("environment", "must be an object of at most 100 NAME: value pairs.")
    cleaned = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise JobRequestError("environment", f"{name!r} is not a valid variable name.")
        if name in _RESERVED_ENV_NAMES or name.startswith(_RESERVED_ENV):
            raise JobRequestError("environment", f"{name} cannot be set (it is the user's identity or changes Slurm's own options).")
        if not isinstance(value, str) or "\x00" in value or len(value) > 4096:
            raise JobRequestError("environment", f"the value of {name} must be a string of at most 4096 characters.")
        cleaned[name] = value
    return cleaned


def clean_inline_script(script: str) -> bytes:
    data = script.encode("utf-8")
    if len(data) > MAX_INLINE_SCRIPT_BYTES:
        raise JobRequestError("script", f"is {len(data)} bytes; inline scripts are limited to {MAX_INLINE_SCRIPT_BYTES // 1024} KiB (use script_path).")
    if not script.startswith("#!"):
        raise JobRequestError("script", "must start with an interpreter line such as #!/bin/bash.")
    if "\x00" in script:
        raise JobRequestError("script", "must not contain NUL bytes.")
    return data


PATTERNS = {
    "partition": (_SLURM_NAME, "debug"),
    "account": (_SLURM_NAME, "physics"),
    "qos": (_SLURM_NAME, "normal"),
    "time_limit": (_TIME, "30, 1:30:00 or 2-00:00:00"),
    "memory": (_MEMORY, "4G"),
    "gpus": (_GPUS, "1 or a100:2"),
    "array": (_ARRAY, "0-9%2"),
    "dependency": (_DEPENDENCY, "afterok:123"),
}


def html_pattern(pattern: re.Pattern) -> str:
    """`pattern` for an HTML pattern= attribute, which browsers compile with JavaScript's `v` flag
    (anchored for them): there a `-` inside a character class must be escaped."""
    source = pattern.pattern.removeprefix("^").removesuffix("$")
    return source.replace("-]", "\\-]")
