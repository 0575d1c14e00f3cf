"""The committed gRPC code must match what `proto/` generates today."""

from __future__ import annotations

from pathlib import Path

from nba_service.protogen import OUT_DIR, generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text("utf-8") for p in generate(out_dir=tmp_path)}
    committed = {
        p.relative_to(OUT_DIR): p.read_text("utf-8") for p in OUT_DIR.rglob("*.py*") if p.suffix in (".py", ".pyi")
    }
    stale = sorted(str(name) for name in fresh if committed.get(name) != fresh[name])
    extra = sorted(str(name) for name in committed if name not in fresh)
    assert not stale, f"generated code is out of date with proto/ (stale: {stale}); run `make proto`"
    assert not extra, f"generated files with no .proto source: {extra}; run `make clean proto`"
