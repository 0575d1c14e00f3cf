"""One of the supervisor's workers: the ordinary server, on a port it shares with the other workers.

The supervisor (nba_service.supervisor) starts it as `python -m nba_service.worker INDEX CONTROL_FD SUPERVISOR_PID`
with the validated settings as JSON in SETTINGS_ENV: the settings hold the DSN, which must stay out of the process
list, and the variable's name is outside `NBA_*`, so the settings model never reads it as a setting.

CONTROL_FD is the worker's end of a socket pair. The worker reports there, one JSON object a line with a `type`:
`{"type": "ready", "ready": <store ready>}` once it serves, or `{"type": "failed", "error": ...}` when it cannot
start, so that the supervisor says `cannot start: ...` once instead of once per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from typing import Any

SETTINGS_ENV = "_NBA_WORKER_SETTINGS"
ACTIVATION_ENV = "_NBA_WORKER_ACTIVATION"  # how the version this worker starts on was activated, by whom
DEPLOY_SOCKET_ENV = "_NBA_DEPLOY_SOCKET"  # where admin calls go: the supervisor deploys, not the worker
PANEL_SECRET_ENV = "_NBA_PANEL_SECRET"  # noqa: S105 - a variable name; hex: the panel sessions' secret, one for all workers (no secret file)
# A worker's connections are closed gracefully (GOAWAY; calls in flight finish) once they are this old, so a
# retiring worker that has left the port is rid of every connection within RETIRE_DRAIN_S: the clients have
# reconnected to the other workers by then.
CONNECTION_AGE_S = 2.0
LEAVE_PORT_SETTLE_S = 0.3
RETIRE_DRAIN_S = CONNECTION_AGE_S * 1.1 + LEAVE_PORT_SETTLE_S  # gRPC jitters the age by up to 10%
_PR_SET_PDEATHSIG = 1


def report(control: socket.socket, kind: str, **fields: Any) -> None:
    """Sends one control message; a supervisor that is gone is no reason to fail (the worker is stopping then)."""
    with contextlib.suppress(OSError):
        control.sendall(json.dumps({"type": kind, **fields}).encode() + b"\n")


def _stop_with_supervisor(supervisor_pid: int) -> None:
    """A worker left behind by a killed supervisor would serve the port with nobody to stop or replace it:
    the kernel sends it SIGTERM (a graceful stop) when the supervisor dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before the line above took effect
        sys.exit(0)


def main() -> None:
    index, control_fd, supervisor_pid = (int(arg) for arg in sys.argv[1:4])
    _stop_with_supervisor(supervisor_pid)

    import structlog  # noqa: PLC0415 - after the check above: a worker of a dead supervisor leaves at once

    from nba_service.cpu_pinning import pin_to_one_cpu  # noqa: PLC0415
    from nba_service.deploy.remote import SupervisedRulesets  # noqa: PLC0415
    from nba_service.deploy.state import Activation  # noqa: PLC0415
    from nba_service.errors import NbaError  # noqa: PLC0415
    from nba_service.log_setup import configure_logging  # noqa: PLC0415
    from nba_service.runner import leave_stuck_threads, serve, start_failure  # noqa: PLC0415
    from nba_service.settings import Settings  # noqa: PLC0415

    settings = Settings.model_validate_json(os.environ.pop(SETTINGS_ENV))
    deploys = os.environ.pop(DEPLOY_SOCKET_ENV, None)
    panel_secret = os.environ.pop(PANEL_SECRET_ENV, None)
    activation = os.environ.pop(ACTIVATION_ENV, None)
    structlog.contextvars.bind_contextvars(worker=index)
    configure_logging(settings.log_format, settings.log_level)
    if settings.pin_cpus:
        pin_to_one_cpu(index)
    with socket.socket(fileno=control_fd) as control:
        try:
            asyncio.run(
                serve(
                    settings,
                    lambda _server, ready, version: report(
                        control, "ready", ready=ready, version=version.to_json() if version else None
                    ),
                    worker=index,
                    control=None if deploys is None else SupervisedRulesets(deploys),
                    panel_secret=None if panel_secret is None else bytes.fromhex(panel_secret),
                    activation=None if activation is None else Activation.from_json(json.loads(activation)),
                )
            )
        except Exception as exc:
            problem = start_failure(exc)
            if problem is None:
                raise
            problems = [f"{p.field}: {p.problem}" for p in exc.problems] if isinstance(exc, NbaError) else []
            report(control, "failed", error=problem, problems=problems)
            sys.exit(2)
    leave_stuck_threads()


if __name__ == "__main__":
    main()
