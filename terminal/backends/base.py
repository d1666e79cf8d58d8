"""The seam between the terminal consumer and whatever runs the shell (local PTY, AWS SSM)."""

from collections.abc import Callable
from dataclasses import dataclass, field


class BackendError(Exception):
    """The shell could not be started or failed; the message is shown to the user."""


@dataclass(frozen=True)
class ShellRequest:
    posix_username: str
    expected_uid: int
    home_directory: str
    working_directory: str | None
    cols: int
    rows: int
    session_id: str = ""  # the portal's TerminalSession id
    account: object = None  # the ClusterAccount (user and cluster loaded), for backends that call out (SSM)
    id_token: str | None = field(default=None, repr=False)  # the IdP's ID token, when the user signed in with OIDC


class SessionBackend:
    """Runs one interactive shell and moves bytes.

    The relay (the consumer) owns flow control: the backend calls `read_budget()` before every read
    and never reads more; it calls `on_output(data)` with what it read and `on_exit(code, error)`
    exactly once when the shell is gone (`error` set: it failed; else an optional `message=` says why
    it ended, e.g. Session Manager's reason). When the budget has run out the backend stops reading;
    `resume_reading()` tells it the budget has room again.
    """

    name = "base"

    def __init__(self, *, on_output: Callable[[bytes], None], on_exit: Callable[[int | None, str], None], read_budget: Callable[[], int]):
        self.on_output = on_output
        self.on_exit = on_exit
        self.read_budget = read_budget

    session_id: str = ""
    shell: str = ""

    async def start(self, request: ShellRequest) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> bool:
        """Queue input for the shell; False when it was dropped (the shell is not keeping up)."""
        raise NotImplementedError

    def resize(self, cols: int, rows: int) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    async def terminate(self) -> None:
        """End the shell and everything it started; idempotent."""
        raise NotImplementedError
