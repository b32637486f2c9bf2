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


def test_every_registered_version_is_its_module_s_version() -> None:
    """The registry repeats each model's version (it must not import the model modules); a bump in one place only
    would label results with a version the weights do not carry."""
    import importlib

    checked = []
    for name in models.names():
        entry = models.get(name)
        module = importlib.import_module(entry.loader.split(":")[0])
        declared = getattr(module, "MODEL_VERSION", getattr(module, "VERSION", None))
        if declared is not None:
            assert entry.version == declared, f"{name}: registry {entry.version}, {module.__name__} {declared}"
            checked.append(name)
    assert {"combined", "direct", "multistep", "perbone", "segmenter", "sex"} <= set(checked)
