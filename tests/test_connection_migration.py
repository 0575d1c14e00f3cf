"""Why the supervisor warns when net.ipv4.tcp_migrate_req is off: a worker that leaves the port (a deploy, a worker
replaced) shuts its listener down, and the kernel resets the connections queued on it that it had not accepted.

The kernel's part is shown in private network namespaces (`unshare -n`, as root), so the machine's own setting is
never touched: two SO_REUSEPORT listeners on one port, forty connections, one listener shut down unaccepted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nba_service.supervisor import MIGRATE_REQ, connection_migration

_QUEUED = 40
_PROBE = f"""
import json, socket, time
def listener(port=0):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s
leaving = listener()
port = leaving.getsockname()[1]
staying = listener(port)
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range({_QUEUED})]
time.sleep(0.1)
leaving.shutdown(socket.SHUT_RD)  # as GrpcServer.leave_port does
staying.settimeout(0.3)
accepted = []
while True:
    try:
        accepted.append(staying.accept()[0])
    except TimeoutError:
        break
reset = 0
for client in clients:
    client.setblocking(False)
    try:
        client.recv(1)
    except ConnectionResetError:
        reset += 1
    except BlockingIOError:
        pass
print(json.dumps({{"accepted": len(accepted), "reset": reset}}))
"""


def test_the_setting_is_read_as_on_off_or_unknown(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_migrate_req"
    setting.write_text("0\n")
    assert connection_migration(setting) is False
    setting.write_text("1\n")
    assert connection_migration(setting) is True
    assert connection_migration(tmp_path / "absent") is None


def _in_private_namespace(migrate: int) -> dict[str, int]:
    script = f'ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req={migrate} && exec {sys.executable} -c "$0"'
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


def test_a_leaving_listener_resets_its_queue_unless_the_kernel_migrates_it() -> None:
    missing = [tool for tool in ("unshare", "ip", "sysctl") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing or not MIGRATE_REQ.exists():
        reason = f"needs root, unshare, ip and sysctl, and Linux 5.14+ (uid {os.geteuid()}, missing {missing})"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    off = _in_private_namespace(0)
    assert off["reset"] > 0, off
    assert off["accepted"] + off["reset"] == _QUEUED, off
    on = _in_private_namespace(1)
    assert on == {"accepted": _QUEUED, "reset": 0}
