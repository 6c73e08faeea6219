"""A run keeps its compiled graphs in its directory, and a resumed run loads them first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from esper.tolaria import compile_cache
from esper.tolaria.compile_cache import CACHE_FILE, load_compile_cache, save_compile_cache
from esper.tolaria.run import grow
from tests.tolaria.test_tolaria_grow import tiny

ROOT = Path(__file__).resolve().parents[2]

SQUARES = "lambda x: (x.sin() * 2).sum()"  # the graph both processes compile

LOAD_AND_COMPILE = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from esper.tolaria.compile_cache import load_compile_cache
    loaded = load_compile_cache(Path(sys.argv[1]))
    f = torch.compile({SQUARES}, fullgraph=True)
    torch.testing.assert_close(f(torch.ones(8)), (torch.ones(8).sin() * 2).sum())
    print(loaded, counters["inductor"]["fxgraph_cache_hit"])
""")


@pytest.mark.slow
def test_another_machine_loads_the_saved_graphs_instead_of_compiling(tmp_path):
    """The graphs this process compiled, saved; a process with its own empty inductor
    cache (another machine) loads them, and its compile of the same graph is a cache hit
    (without the file its cache is empty: no hit is possible)."""
    f = torch.compile(eval(SQUARES), fullgraph=True)
    f(torch.ones(8))
    assert save_compile_cache(tmp_path) >= 2  # the inductor graph and its AOT wrapper
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty"),
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_COMPILE, str(tmp_path)], env=env,
                         check=True, capture_output=True, text=True).stdout
    loaded, hits = (int(n) for n in out.split())
    assert loaded >= 2 and hits == 1


def test_a_cache_that_cannot_be_loaded_is_reported_and_ignored(tmp_path, monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(compile_cache._log, "warning",
                        lambda message, *args: warned.append(message % args))
    (tmp_path / CACHE_FILE).write_bytes(b"not a cache")
    assert load_compile_cache(tmp_path) == 0
    assert len(warned) == 1 and f"{CACHE_FILE}: not loaded (torch found nothing" in warned[0]
    assert "compiles its graphs again" in warned[0]
    assert load_compile_cache(tmp_path / "elsewhere") == 0 and len(warned) == 1  # no file


def test_the_run_saves_after_an_epoch_that_compiled_and_resume_loads_first(tmp_path,
                                                                          monkeypatch):
    """The wiring, with torch's cache functions recorded (aot_eager caches nothing)."""
    calls: list[str] = []

    def save():
        calls.append("save")
        return b"graphs", SimpleNamespace(artifacts={"inductor": ["k1", "k2"]})

    def load(data):
        calls.append(f"load {data!r}")
        return SimpleNamespace(artifacts={"inductor": ["k1", "k2"]})

    monkeypatch.setattr(compile_cache.torch.compiler, "save_cache_artifacts", save)
    monkeypatch.setattr(compile_cache.torch.compiler, "load_cache_artifacts", load)
    out = tmp_path / "run"
    config = {"compile": True, "compile_backend": "aot_eager", "max_seeds": 0}
    grow(tiny(out, 2, **config))
    assert calls == ["save"]  # epoch 1 compiled the step; epoch 2 compiled nothing
    assert (out / CACHE_FILE).read_bytes() == b"graphs"
    grow(tiny(out, 3, **config), resume=out)  # one more epoch
    assert calls[1:] == ["load b'graphs'", "save"]  # loaded first; its own compile saved
    grow(tiny(out, 1, **config), overwrite=True)
    assert calls[3:] == ["save"]  # a new run loads nothing


def test_a_save_replaces_the_file_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts",
                        lambda: (b"new", SimpleNamespace(artifacts={"aot_autograd": ["k"]})))
    (tmp_path / CACHE_FILE).write_bytes(b"old")
    assert save_compile_cache(tmp_path) == 1
    assert (tmp_path / CACHE_FILE).read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILE]
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    assert save_compile_cache(tmp_path) == 0
    assert (tmp_path / CACHE_FILE).read_bytes() == b"new"
