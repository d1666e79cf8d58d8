"""The whole path, timed: a SCIM deactivation (as Entra sends it) → the person's live terminals on both daphne
processes closed, their API token and web session refused. A real throwaway POSIX user provisioned over SCIM
(root, as in CI), two daphne processes on a Redis channel layer of the test's own (tests/multiprocess.py).
"""

import asyncio
import contextlib
import time

import pytest
import requests

from accounts.models import Membership
from accounts.services import create_api_token
from terminal.models import TerminalSession
from tests.conftest import wait_for
from tests.multiprocess import two_daphnes
from tests.terminal_client import signed_in_cookie, ws_terminal
from tests.test_scim import (
    GROUP_SCHEMA,
    PATCH_OP,
    USER_SCHEMA,
    Scim,
    lab_fixture,  # noqa: F401 (the fixture `lab`)
    needs_root,
)

DEADLINE = 1.0  # seconds from the SCIM request to the last live terminal closed (issue 10)


@needs_root
@pytest.mark.slow
def test_a_scim_deactivation_closes_live_terminals_on_every_process_within_a_second(lab, transactional_db, tmp_path,
                                                                                   settings, redis_layer):
    email = f"ct{int(time.time() * 1000) % 10**9}@example.test"
    with two_daphnes(tmp_path, settings, redis_layer.url) as (one, two):
        scim = Scim(lab.token, base=one)
        created = scim("POST", "/Users", {"schemas": [USER_SCHEMA], "userName": email, "active": True,
                                          "emails": [{"value": email, "primary": True, "type": "work"}]})
        assert created.status == 201, created
        user_id = created.json["id"]
        group = scim("POST", "/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "lab-hpc", "members": [{"value": user_id}]})
        assert group.status == 201, group
        membership = Membership.objects.select_related("user").get(tenant=lab.tenant, user__email=email)
        assert membership.status == "active"
        user = membership.user
        cookie = signed_in_cookie(user)
        _token, api_text = create_api_token(user=user, tenant=lab.tenant, name="cli")
        api = {"Authorization": f"Bearer {api_text}"}
        web = requests.Session()
        web.cookies.set("sessionid", cookie)
        for server in (one, two):
            assert requests.get(f"{server}/v1/clusters", headers=api, timeout=30).status_code == 200
            assert web.get(f"{server}/", allow_redirects=False, timeout=30).status_code == 200
        path = f"/ws/t/{lab.tenant.slug}/c/hpc/terminal/?cols=80&rows=24"
        deactivate = {"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}

        async def scenario():
            async with contextlib.AsyncExitStack() as stack:
                held = [await stack.enter_async_context(ws_terminal(server, cookie, path)) for server in (one, two)]
                assert {t.connected.get("worker") for t in held} == {"1", "2"}, [t.connected for t in held]
                for i, t in enumerate(held):
                    await t.run(f"echo alive-''{i}".encode(), f"alive-{i}\r\n".encode())
                t0 = time.monotonic()
                request = asyncio.create_task(asyncio.to_thread(scim, "PATCH", f"/Users/{user_id}", deactivate))

                async def closed(t):
                    ended = await t.status("exit", timeout=10)
                    return ended, time.monotonic() - t0

                results = await asyncio.gather(*(closed(t) for t in held))
                answer = await request
                answered = time.monotonic() - t0
                return results, answer, answered, t0

        results, answer, answered, t0 = asyncio.run(scenario())
        assert answer.status == 200 and answer.json["active"] is False, answer
        refused = {}
        for server in (one, two):  # the API token and the web session, on each process
            assert requests.get(f"{server}/v1/clusters", headers=api, timeout=30).status_code == 401
            refused[server] = time.monotonic() - t0
            assert web.get(f"{server}/", allow_redirects=False, timeout=30).status_code == 302
        closes = [seconds for _status, seconds in results]
        print(f"\nSCIM deactivation: terminals closed after {', '.join(f'{s * 1000:.0f} ms' for s in closes)}; "
              f"the SCIM answer after {answered * 1000:.0f} ms (it also locks the POSIX account); "
              f"API token refused on both processes by {max(refused.values()) * 1000:.0f} ms")
        assert all(status["reason"] == "revoked" for status, _ in results), results
        assert max(closes) < DEADLINE, closes

        def finished():
            rows = list(TerminalSession.objects.filter(user=user))
            return all(r.ended_at for r in rows) and rows

        rows = wait_for(finished, 10, "both sessions recorded as ended")
        assert {r.end_reason for r in rows} == {"revoked"}
        membership.refresh_from_db()
        assert (membership.status, membership.status_reason) == ("offboarded", "deactivated in the IdP (SCIM)")
