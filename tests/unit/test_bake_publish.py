"""The end of a bake: the image and its manifest are put in place so that an interrupt at any
moment leaves what flash accepts (the old pair, the new pair) or refuses with "bake it again" (an
image without a manifest), never a new image beside the old manifest; and every temporary file
goes, by the bake's own cleanup or by the next bake's clean_stale."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from ceil import bakery
from ceil.config import load_cluster
from ceil.errors import CeilError
from ceil.flash.blockmap import build_blockmap
from ceil.flash.cli import check_against_manifest
from ceil.image_digests import digest_range
from ceil.secrets import SecretStore

MiB = 1 << 20


def write_image(path: Path) -> list[tuple[int, int, str]]:
    """A 2 MiB image with an MBR and random data; its block map with a sha256 per range."""
    mbr = bytearray(512)
    struct.pack_into("<B3xB3xII", mbr, 446, 0, 0x83, 2048, 2048)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.truncate(2 * MiB)
        f.write(mbr)
        f.seek(MiB + 4096)
        f.write(os.urandom(8192))
    with open(path, "rb") as f:
        bmap = build_blockmap(f.fileno(), 2 * MiB)
        return [(o, n, digest_range(f.fileno(), o, n)) for o, n in bmap.ranges]


def composed_context(tmp_path: Path, ssh_pubkey: str) -> bakery.BakeContext:
    """A router's bake that has composed its image into the partial output, the steps before
    it stood in for: what finish_image starts from."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"ssh: {{authorized_keys: [\"{ssh_pubkey}\"]}}\nrouter: {{uplink: {{type: ethernet}}}}\n")
    ctx = bakery.BakeContext(load_cluster(cfg), cfg, "router", tmp_path / "out", SecretStore(tmp_path / "secrets"))
    ctx.out_dir.mkdir(exist_ok=True)
    ctx.base = SimpleNamespace(source="base.img", sha256="0" * 64)
    ctx.payload = SimpleNamespace(instance_id="i-test", features=[], packages=[])
    return ctx


def composer(written: list[bytes]):
    """compose_image's stand-in: a new image in the partial output, its bytes kept in `written`."""
    def compose_stub(ctx: bakery.BakeContext) -> None:
        ctx.composed = bakery.Composed(write_image(ctx.partial_output), None, False)
        written.append(ctx.partial_output.read_bytes())
    return compose_stub


def bake(ctx: bakery.BakeContext, monkeypatch) -> bytes:
    """Bake with the stand-in steps; the image it composed."""
    written = []
    monkeypatch.setattr(bakery, "PREPARE", [])
    monkeypatch.setattr(bakery, "WRITE", [composer(written), bakery.finish_image])
    try:
        bakery.bake(ctx)
    finally:
        monkeypatch.undo()
    return written[0]


def interrupt_file_operation(monkeypatch, n: int) -> None:
    """Let n file operations (write, remove, rename) run, then raise KeyboardInterrupt at the
    next one, once: as a Ctrl-C landing between two of them."""
    done = []

    def interrupting(real):
        def operation(*args, **kwargs):
            if len(done) == n:
                done.append("interrupted")
                raise KeyboardInterrupt
            done.append(real.__name__)
            return real(*args, **kwargs)
        return operation

    monkeypatch.setattr(Path, "write_text", interrupting(Path.write_text))
    monkeypatch.setattr(Path, "unlink", interrupting(Path.unlink))
    monkeypatch.setattr(os, "replace", interrupting(os.replace))


def flash_verdict(ctx: bakery.BakeContext, old: bytes, new: bytes) -> str:
    try:
        check_against_manifest(ctx.output)
    except CeilError as e:
        return f"refused: {e}"
    image = ctx.output.read_bytes()
    return "old pair" if image == old else "new pair" if image == new else "accepted an unknown image"


@pytest.mark.parametrize("n", range(5))  # publishing takes 4 file operations; 4: the bake's cleanup
def test_a_rebake_interrupted_anywhere_leaves_a_pair_or_an_image_flash_says_to_bake_again(
        tmp_path, ssh_pubkey, monkeypatch, n):
    ctx = composed_context(tmp_path, ssh_pubkey)
    old = bake(ctx, monkeypatch)
    assert flash_verdict(ctx, old, b"") == "old pair"

    written = []
    monkeypatch.setattr(bakery, "PREPARE", [])
    monkeypatch.setattr(bakery, "WRITE", [composer(written), bakery.finish_image])
    interrupt_file_operation(monkeypatch, n)
    with contextlib.suppress(KeyboardInterrupt):
        bakery.bake(ctx)
    monkeypatch.undo()

    # No temporary file is left: the bake's cleanup removed it, or (the cleanup interrupted too)
    # the next bake's clean_stale does.
    bakery.clean_stale(ctx.out_dir)
    leftovers = sorted(p.name for p in ctx.out_dir.iterdir())
    assert set(leftovers) <= {".gitignore", "ceil-router.img", "ceil-router.json"}, leftovers
    verdict = flash_verdict(ctx, old, written[0])
    assert verdict in ("old pair", "new pair") or (
        verdict.startswith(f"refused: {ctx.output} has no manifest beside it (ceil-router.json)")
        and verdict.endswith("bake it again (python bake.py --role router).")), verdict


def test_a_rebake_that_is_not_interrupted_leaves_the_new_pair(tmp_path, ssh_pubkey, monkeypatch):
    ctx = composed_context(tmp_path, ssh_pubkey)
    old = bake(ctx, monkeypatch)
    new = bake(ctx, monkeypatch)
    assert flash_verdict(ctx, old, new) == "new pair"
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [".gitignore", "ceil-router.img", "ceil-router.json"]


def test_every_temporary_file_of_the_bake_is_one_clean_stale_removes(tmp_path, ssh_pubkey):
    ctx = composed_context(tmp_path, ssh_pubkey)
    for partial in ctx.partials:
        partial.write_bytes(b"left by a killed bake")
    (ctx.out_dir / "ceil-router.img").write_bytes(b"kept")
    bakery.clean_stale(ctx.out_dir)
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == ["ceil-router.img"]
    assert ctx.partial_manifest in ctx.partials

