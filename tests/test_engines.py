"""Engines: the local process pool and Ray actors run the same per-film work as one process."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boneage import cli, engines
from boneage.batch import InputItem, discover_inputs, run_batch
from boneage.synth import generate_hand, write_dicom

CHEST = Path(__file__).parent / "data" / "RG1_J2KI.dcm"


def test_pool_workers_ignore_ctrl_c(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the workers must stay quiet and let
    the main process end them."""
    script = tmp_path / "pool.py"
    script.write_text(
        "import signal, sys, time\n"
        "from boneage import engines\n"
        "if __name__ == '__main__':\n"
        # As launched from a terminal: a background job (nohup ... &) inherits SIGINT ignored.
        "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "    try:\n"
        "        with engines.start_pool(2, time.sleep, (0,)) as pool:\n"
        "            results = pool.imap_unordered(time.sleep, [60, 60])\n"
        "            time.sleep(1.5)\n"
        "            print('ready', flush=True)\n"
        "            list(results)\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in out, (out, err)
    for noise in ("Traceback", "KeyboardInterrupt", "PoolWorker"):  # a worker's report starts "Process SpawnPoolWorker-1:"
        assert noise not in err, err


def test_an_unknown_or_missing_engine_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.csv"
    assert cli.main(["predict", str(CHEST), "--out", str(out), "--engine", "spark"]) == cli.EXIT_USAGE
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the cluster extra were not installed
    assert cli.main(["predict", str(CHEST), "--out", str(out), "--engine", "ray"]) == cli.EXIT_NOT_AVAILABLE
    assert "pip install -e '.[cluster]'" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def ray_local():
    """A small local Ray instance (2 CPUs, no dashboard) for this module."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(path: Path) -> dict[str, dict]:
    return {r["path"]: r for r in csv.DictReader(path.open())}


def test_ray_gives_the_same_records_as_a_local_run_and_resumes_the_same_way(tmp_path, ray_local):
    """The shipped models, on one synthetic hand and three films that are not (a chest CR, a file
    that is not an image, a missing file): the same record for each, whichever engine ran it."""
    folder = tmp_path / "films"
    folder.mkdir()
    write_dicom(generate_hand(2102, 0, size=256), folder / "hand.dcm")
    (folder / "chest.dcm").write_bytes(CHEST.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    items = discover_inputs([str(folder), str(tmp_path / "missing.dcm")])
    local = tmp_path / "local.csv"
    run_batch(items, local, progress=False, sr_dir=tmp_path / "sr-local")

    on_ray = tmp_path / "ray.csv"
    first = [str(folder / "hand.dcm"), str(folder / "chest.dcm")]  # a run cut short ...
    assert cli.main(["predict", *first, "--out", str(on_ray), "--engine", "ray", "--workers", "2", "--quiet",
                     "--sr-dir", str(tmp_path / "sr-ray")]) == cli.EXIT_PARTIAL
    # ... resumed with the rest: one record per input, none twice.
    assert cli.main(["predict", str(folder), str(tmp_path / "missing.dcm"), "--out", str(on_ray), "--engine", "ray",
                     "--workers", "2", "--quiet", "--resume", "--sr-dir", str(tmp_path / "sr-ray")]) == cli.EXIT_PARTIAL
    lines = list(csv.DictReader(on_ray.open()))
    assert sorted(r["path"] for r in lines) == sorted(i.path for i in items)

    expected, got = _rows(local), _rows(on_ray)
    assert expected[str(folder / "hand.dcm")]["status"] == "ok"
    for path, row in expected.items():
        other = dict(got[path])
        for column in ("sr_path", "sc_path"):  # other folders, same file names
            assert Path(other.pop(column) or ".").name == Path(row[column] or ".").name, column
        assert other == {k: v for k, v in row.items() if k not in ("sr_path", "sc_path")}, path
    assert len(list((tmp_path / "sr-ray").iterdir())) == 1


def test_a_ray_actor_loads_the_models_once_for_all_its_films(tmp_path, ray_local):
    remote = ray_local.remote(engines.FilmActor).options(num_cpus=1)
    actor = remote.remote("cpu", (None, None), 1)
    missing = [InputItem(str(tmp_path / f"missing{i}.dcm")) for i in range(3)]
    outcomes = [ray_local.get(actor.run.remote(item)) for item in missing]
    info = ray_local.get(actor.info.remote())
    ray_local.kill(actor)
    assert [o.result.reason for o in outcomes] == ["file not found"] * 3
    assert info["films"] == 3 and info["pid"] != os.getpid() and "direct" in info["versions"]


def test_a_worker_that_cannot_load_the_models_answers_each_film_with_the_reason(monkeypatch):
    # A pool replaces a worker whose initialiser raises, forever (a run that never ends); the worker
    # must start anyway and give every film an error record that says why.
    def broken_load(*args, **kwargs):
        raise OSError("models folder unreadable")

    from boneage import runtime

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(runtime, "set_threads", lambda threads: None)  # this process keeps its threads
    monkeypatch.setattr(engines.BoneAgeEstimator, "load", broken_load)
    monkeypatch.setattr(engines, "_WORKER_ESTIMATOR", None)
    monkeypatch.setattr(engines, "_WORKER_START_ERROR", None)
    try:
        engines._worker_init("cpu", (None, None))  # does not raise
    finally:
        signal.signal(signal.SIGINT, previous)
    outcome = engines._worker_run(InputItem("film.png"))
    assert outcome.result.status == "error" and outcome.result.path == "film.png"
    assert "could not load the models" in outcome.result.reason and "models folder unreadable" in outcome.result.reason


def test_a_one_worker_run_restores_the_callers_thread_pools():
    # One worker runs its networks and pools on one thread, then gives the caller its settings back.
    import torch
    from threadpoolctl import threadpool_info

    from boneage import runtime

    before = ([p["num_threads"] for p in threadpool_info()], torch.get_num_threads(), runtime.get_threads())

    class CountingEstimator:
        versions: dict = {}

        def estimate(self, file, **kwargs):
            from boneage.result import BoneAgeResult

            assert runtime.get_threads() == 1 and all(p["num_threads"] == 1 for p in threadpool_info())
            return BoneAgeResult(path=kwargs.get("name") or str(file), status="error", reason="test")

    outcomes = list(engines.local_results([InputItem("a.png"), InputItem("b.png")], estimator=CountingEstimator()))
    assert [o.result.path for o in outcomes] == ["a.png", "b.png"]
    assert ([p["num_threads"] for p in threadpool_info()], torch.get_num_threads(), runtime.get_threads()) == before
