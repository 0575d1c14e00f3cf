"""Generates the Python gRPC code under `nba_service/_proto` from `proto/`.

Run `python -m nba_service.protogen` after editing a `.proto` file; a test regenerates into a
temporary folder and fails when the committed code is out of date.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "nba_service" / "_proto"
PACKAGE = "nba_service._proto"


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    from grpc_tools import protoc  # noqa: PLC0415 - a development tool, not a runtime dependency

    # protoc finds the mypy plugins on PATH; they sit beside this interpreter in a virtualenv.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    protos = sorted(proto_dir.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[Path] = []
    for path in sorted(out_dir.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        text = path.read_text("utf-8")
        fixed = text.replace("from nba.v1 import", f"from {PACKAGE}.nba.v1 import").replace(
            "import nba.v1.", f"import {PACKAGE}.nba.v1."
        )
        path.write_text(fixed, "utf-8")
        written.append(path)
    for folder in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("", "utf-8")
            written.append(init)
    return written


def main() -> None:
    for path in generate():
        sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")


if __name__ == "__main__":
    main()
