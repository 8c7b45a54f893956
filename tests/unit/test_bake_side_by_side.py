"""Roles baked side by side (bakery.bake_side_by_side): each role's payload in the calling thread,
one role after another; the images written in worker threads at the same time; the roles' lines
printed whole and in order; a failure or Ctrl-C leaving only published images and no partials.

The steps are stand-ins that record what ran where; the real steps' work on images is the
image tests' (tests/image/test_bake_images.py bakes --all with the default --jobs)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ceil import bakery
from ceil.config import load_cluster
from ceil.errors import CeilError
from ceil.image_digests import RangeCache
from ceil.secrets import SecretStore
from ceil.ui import byte_progress, say, step

ROLES = ["router", "one", "two", "three"]


@pytest.fixture
def contexts(tmp_path, ssh_pubkey) -> list[bakery.BakeContext]:
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n"
                   "nodes: [{name: one, role: server}, {name: two}, {name: three}]\n")
    cluster, store = load_cluster(cfg), SecretStore(tmp_path / "secrets")
    return [bakery.BakeContext(cluster, cfg, role, tmp_path / "out", store) for role in ROLES]


class Recorder:
    """Stand-in steps: PREPARE records its thread; WRITE leaves a partial, says a line, waits
    `write_seconds[role]` and publishes a file, or fails as `fail` says."""

    def __init__(self, monkeypatch, write_seconds=None, fail=None):
        self.events: list[tuple[str, str, int, float]] = []  # (what, role, thread, when)
        self.write_seconds = write_seconds or {}
        self.fail = fail or {}
        self.lock = threading.Lock()
        monkeypatch.setattr(bakery, "PREPARE", [self.prepare])
        monkeypatch.setattr(bakery, "WRITE", [self.write])

    def note(self, what: str, role: str) -> None:
        with self.lock:
            self.events.append((what, role, threading.get_ident(), time.monotonic()))

    def prepare(self, ctx: bakery.BakeContext) -> None:
        self.note("prepare", ctx.role)
        ctx.base = SimpleNamespace(sha256="0" * 64, path=Path("/nonexistent"), source="base.img")
        with step("render_payload", f"{ctx.role}'s payload"):
            time.sleep(0.02)
        self.note("prepared", ctx.role)

    def write(self, ctx: bakery.BakeContext) -> None:
        self.note("write", ctx.role)
        ctx.partial_output.write_bytes(b"half")
        say(f"  writing {ctx.role}")
        time.sleep(self.write_seconds.get(ctx.role, 0.05))
        if ctx.role in self.fail:
            raise self.fail[ctx.role]
        os.replace(ctx.partial_output, ctx.output)
        self.note("written", ctx.role)

    def interval(self, role: str, start: str, end: str) -> tuple[float, float]:
        times = {what: when for what, r, _, when in self.events if r == role}
        return times[start], times[end]


def bake(contexts, jobs=2) -> list[str]:
    return [ctx.role for ctx in bakery.bake_side_by_side(contexts, jobs, lambda ctx: say(f"baking {ctx.role}"))]


def blocks(stderr: str) -> list[list[str]]:
    """The printed lines, one list per role, from each role's `baking` line."""
    out: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith("baking "):
            out.append([])
        if out and line.strip():
            out[-1].append(line.split()[0] if line.startswith("  render_payload") else line.strip())
    return out


def test_images_are_written_at_the_same_time_and_payloads_one_after_another_in_the_calling_thread(
        contexts, monkeypatch, capsys):
    rec = Recorder(monkeypatch, write_seconds={"router": 0.4, "one": 0.4})
    assert bake(contexts) == ROLES

    router, one = rec.interval("router", "write", "written"), rec.interval("one", "write", "written")
    assert one[0] < router[1] and router[0] < one[1], "the first two images were not written side by side"
    main = threading.get_ident()
    prepares = [(e[1], e[2]) for e in rec.events if e[0] == "prepare"]
    assert prepares == [(role, main) for role in ROLES]
    spans = sorted(rec.interval(role, "prepare", "prepared") for role in ROLES)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "two payloads were rendered at once"
    assert {e[2] for e in rec.events if e[0] == "write"} - {main}, "no image was written in a worker thread"
    assert sorted(p.name for p in contexts[0].out_dir.iterdir()) == sorted(
        [".gitignore"] + [f"ceil-{r}.img" for r in ROLES])


def test_each_roles_lines_are_printed_whole_and_in_order_when_a_later_role_finishes_first(
        contexts, monkeypatch, capsys):
    Recorder(monkeypatch, write_seconds={"router": 0.5, "one": 0.01})
    assert bake(contexts) == ROLES
    assert blocks(capsys.readouterr().err) == [
        [f"baking {r}", "render_payload", f"writing {r}"] for r in ROLES]


def test_a_failed_role_stops_new_ones_and_what_was_being_written_is_published_first(contexts, monkeypatch, capsys):
    # In this order whatever the machine's load: two is prepared before one fails, and the
    # router finishes only after one has failed.
    two_prepared, one_failed = threading.Event(), threading.Event()
    rec = Recorder(monkeypatch)
    prepare, write = rec.prepare, rec.write

    def prepare_then_tell(ctx):
        prepare(ctx)
        if ctx.role == "two":
            two_prepared.set()

    def write_in_order(ctx):
        if ctx.role == "one":
            assert two_prepared.wait(10)
            one_failed.set()
            raise CeilError("no space left on the device while writing out/ceil-one.img")
        if ctx.role == "router":
            assert one_failed.wait(10)
        write(ctx)

    monkeypatch.setattr(bakery, "PREPARE", [prepare_then_tell])
    monkeypatch.setattr(bakery, "WRITE", [write_in_order])
    published = []
    with pytest.raises(CeilError, match="ceil-one.img"):
        for ctx in bakery.bake_side_by_side(contexts, 2, lambda ctx: say(f"baking {ctx.role}")):
            published.append(ctx.role)

    # The router's image, being written beside one's, is published and handed over (for its
    # bookkeeping); two, prepared ahead, is not begun once one failed; three is not prepared.
    assert published == ["router"]
    err = capsys.readouterr().err
    assert [b[0] for b in blocks(err)] == ["baking router", "baking one", "baking two"]
    assert "two: not written (another role failed)" in err
    assert blocks(err)[1][-1] == "one failed (the error is the last line)"
    out = contexts[0].out_dir
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "ceil-router.img"]
    assert "three" not in {e[1] for e in rec.events}
    assert ("write", "two") not in {e[:2] for e in rec.events}


def test_a_role_failing_before_its_write_prints_after_the_roles_still_being_written(contexts, monkeypatch, capsys):
    rec = Recorder(monkeypatch, write_seconds={"router": 0.3, "one": 0.3})
    prepare = rec.prepare

    def prepare_or_fail(ctx):
        prepare(ctx)
        if ctx.role == "two":
            raise CeilError("two's payload: a feature refused the cluster")

    monkeypatch.setattr(bakery, "PREPARE", [prepare_or_fail])
    published = []
    with pytest.raises(CeilError, match="two's payload"):
        for ctx in bakery.bake_side_by_side(contexts, 2, lambda ctx: say(f"baking {ctx.role}")):
            published.append(ctx.role)
    assert published == ["router", "one"]
    err = capsys.readouterr().err
    assert [b[0] for b in blocks(err)] == ["baking router", "baking one", "baking two"]
    assert blocks(err)[2][-1] == "two failed (the error is the last line)"
    assert not list(contexts[0].out_dir.glob("*.partial"))


def test_a_second_failed_role_shows_its_own_error_among_its_lines(contexts, monkeypatch, capsys):
    both_running = threading.Barrier(2, timeout=10)
    rec = Recorder(monkeypatch)

    def both_fail(ctx):
        rec.note("write", ctx.role)
        both_running.wait()
        raise CeilError(f"mcopy failed on the boot partition of {ctx.role}'s image")

    monkeypatch.setattr(bakery, "WRITE", [both_fail])
    with pytest.raises(CeilError, match="router's image"):
        bake(contexts)
    router, one = blocks(capsys.readouterr().err)[:2]
    assert router[-1] == "router failed (the error is the last line)"
    assert one[-1] == "one failed: mcopy failed on the boot partition of one's image"


def test_a_caller_that_stops_iterating_stops_the_workers_and_leaves_no_partial(contexts, monkeypatch):
    rec = Recorder(monkeypatch, write_seconds={"router": 0.05, "one": 2.0, "two": 2.0})
    baking = bakery.bake_side_by_side(contexts, 2)
    assert next(baking).role == "router"
    start = time.monotonic()
    baking.close()  # as the bake's loop does when its bookkeeping fails (contextlib.closing)
    assert time.monotonic() - start < 5
    written = {e[1] for e in rec.events if e[0] == "written"}
    out = contexts[0].out_dir
    assert not list(out.glob("*.partial"))
    assert sorted(p.name for p in out.iterdir()) == sorted([".gitignore"] + [f"ceil-{r}.img" for r in written])
    assert "three" not in {e[1] for e in rec.events if e[0] == "write"}


def test_ctrl_c_stops_every_image_being_written_and_leaves_no_partial(contexts, monkeypatch):
    stopped = []

    def endless_copy(ctx: bakery.BakeContext) -> None:
        ctx.partial_output.write_bytes(b"half")
        try:
            with byte_progress(f"writing {ctx.output.name}", None, ctx.stop) as advance:
                for _ in range(500):  # 10 s at most: the stop must come long before
                    advance(1 << 20)
                    time.sleep(0.02)
        except KeyboardInterrupt:
            stopped.append(ctx.role)
            raise
        os.replace(ctx.partial_output, ctx.output)

    monkeypatch.setattr(bakery, "PREPARE", [lambda ctx: setattr(ctx, "base", SimpleNamespace(sha256="0" * 64))])
    monkeypatch.setattr(bakery, "WRITE", [endless_copy])
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starting a job in the
    # background (as make's parent may be) leaves SIGINT ignored, and then Python installs none.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bake(contexts)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, handler)
    assert time.monotonic() - start < 5, "the workers did not stop at their next progress step"
    assert sorted(stopped) == ["one", "router"]
    assert sorted(p.name for p in contexts[0].out_dir.iterdir()) == [".gitignore"]


def test_one_job_bakes_one_role_after_another_in_the_calling_thread(contexts, monkeypatch, capsys):
    rec = Recorder(monkeypatch)
    assert bake(contexts, jobs=1) == ROLES
    assert {e[2] for e in rec.events} == {threading.get_ident()}
    order = [(e[0], e[1]) for e in rec.events if e[0] in ("prepare", "written")]
    assert order == [(what, r) for r in ROLES for what in ("prepare", "written")]


def test_roles_sharing_a_base_hash_each_window_once(tmp_path):
    cache, calls = RangeCache(tmp_path / "ranges.json"), []

    def compute():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for the second thread to arrive while the first hashes
        return [(0, 4096, "ab" * 32)]

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_compute("base:0:4096", compute)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [[(0, 4096, "ab" * 32)]] * 2
