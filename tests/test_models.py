"""Tests of the model registry helpers (boneage.models)."""

from __future__ import annotations

from pathlib import Path

from boneage import models


def test_cpu_has_fast_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse sse2 avx avx2 fma\n")
    native = tmp_path / "sapphire"
    native.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert models.cpu_has_fast_bf16(str(avx2)) is False
    assert models.cpu_has_fast_bf16(str(native)) is True
    assert models.cpu_has_fast_bf16(str(tmp_path / "absent")) is False
