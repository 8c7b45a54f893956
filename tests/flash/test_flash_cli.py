"""The click command: option wiring and refusals surfacing as CeilError (non-zero exit)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from conftest import mbr

from ceil.errors import CeilError
from ceil.flash.cli import flash_command, resolve_image


def test_is_a_click_command_with_the_agreed_options():
    assert isinstance(flash_command, click.Command)
    names = {p.name for p in flash_command.params}
    assert names == {"role", "image", "out", "device", "yes", "force", "unmount", "no_verify",
                     "no_eject"}


def test_role_resolves_into_out():
    assert resolve_image("router", None, "out") == "out/ceil-router.img"
    assert resolve_image(None, "/x/y.img", "out") == "/x/y.img"
    # each refusal says what is wrong with what was given ("not both" was said when neither was)
    with pytest.raises(CeilError, match="--role and --image both name what to flash"):
        resolve_image("router", "/x.img", "out")
    with pytest.raises(CeilError, match=r"say what to flash: --role NAME .* or --image PATH$"):
        resolve_image(None, None, "out")


def test_refusals_exit_non_zero_with_a_ceil_error(tmp_path):
    missing = CliRunner().invoke(flash_command, ["--role", "node1", "--out", str(tmp_path),
                                                 "--device", "/dev/sdz", "--yes"])
    assert missing.exit_code != 0 and isinstance(missing.exception, CeilError)
    assert "ceil-node1.img not found" in str(missing.exception)

    image = tmp_path / "pi.img"
    image.write_bytes(mbr([(0x83, 1, 7)]) + bytes(3584))
    not_block = tmp_path / "card.bin"
    not_block.write_bytes(bytes(8192))
    result = CliRunner().invoke(flash_command, ["--image", str(image), "--device",
                                                str(not_block), "--yes", "--force"])
    assert result.exit_code != 0 and isinstance(result.exception, CeilError)
    assert "is not a block device" in str(result.exception)
    assert not_block.read_bytes() == bytes(8192)


def test_help_mentions_safety():
    out = " ".join(CliRunner().invoke(flash_command, ["--help"]).output.split())
    assert "Never allows the system disk" in out and "--unmount" in out


def test_image_damaged_after_baking_is_refused_before_writing(tmp_path):
    """flash compares a baked image with its manifest's sha256 before touching any device."""
    import hashlib
    import json

    from click.testing import CliRunner

    from ceil.flash.cli import flash_command

    img = tmp_path / "ceil-router.img"
    img.write_bytes(mbr([(0x83, 1, 7)]) + b"baked image bytes" * 100)
    (tmp_path / "ceil-router.json").write_text(json.dumps({"output": {"sha256": hashlib.sha256(b"other").hexdigest()}}))
    result = CliRunner().invoke(flash_command, ["--role", "router", "--out", str(tmp_path), "--device", "/dev/nonexistent-ceil"])
    assert result.exit_code != 0
    assert "does not match its manifest" in str(result.exception)


@pytest.mark.parametrize("manifest", ["", "[1, 2]", '{"output": "x"}', "\xff"])
def test_a_damaged_manifest_is_refused_with_what_to_do_not_a_traceback(tmp_path, manifest):
    """Found in review: a crash right after a bake can leave the manifest empty; json's own error
    came out as a traceback."""
    img = tmp_path / "ceil-router.img"
    img.write_bytes(mbr([(0x83, 1, 7)]) + b"baked image bytes" * 100)
    (tmp_path / "ceil-router.json").write_bytes(manifest.encode("latin-1"))
    result = CliRunner().invoke(flash_command, ["--role", "router", "--out", str(tmp_path), "--device", "/dev/nonexistent-ceil"])
    assert isinstance(result.exception, CeilError), result.exception
    assert "ceil-router.json is damaged (not the manifest a bake writes)" in str(result.exception)
    assert "bake it again" in str(result.exception)


def flash_refusal(monkeypatch, tmp_path, *args) -> str:
    """The refusal of `flash ARGS --device <a file>`, asserting no device was looked at."""
    import ceil.flash.cli as cli

    monkeypatch.setattr(cli, "current_platform", lambda: pytest.fail("the device was looked at"))
    card = tmp_path / "card.bin"
    card.write_bytes(b"\xa5" * 8192)
    result = CliRunner().invoke(flash_command, [*args, "--device", str(card), "--yes", "--force"])
    assert result.exit_code != 0 and isinstance(result.exception, CeilError), result.output
    assert card.read_bytes() == b"\xa5" * 8192
    return " ".join(str(result.exception).split())


def compressed(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("router.img", data)
        return buf.getvalue()
    if kind == "zstd":  # no zstd in the standard library: its frame magic is what is checked
        return b"\x28\xb5\x2f\xfd" + bytes(60)
    return {"xz": lzma.compress, "gzip": gzip.compress, "bzip2": bz2.compress}[kind](data)


@pytest.mark.parametrize("kind, suffix, decompress, bakeable", [
    ("xz", ".img.xz", "xz -dk", True), ("gzip", ".img.gz", "gunzip -k", True), ("zip", ".zip", "unzip", True),
    ("zstd", ".img.zst", "zstd -d", False), ("bzip2", ".img.bz2", "bunzip2 -k", False)])
def test_a_compressed_image_is_refused_with_how_to_decompress_it(monkeypatch, tmp_path, kind, suffix, decompress,
                                                                  bakeable):
    path = tmp_path / f"router{suffix}"
    path.write_bytes(compressed(kind, mbr([(0x83, 1, 7)]) + bytes(4096)))
    said = flash_refusal(monkeypatch, tmp_path, "--image", str(path))
    assert f"{path} is {kind}-compressed, not a disk image" in said
    assert f"`{decompress} {path}`" in said
    assert ("bake.py --base-image" in said) == bakeable


def test_a_file_without_a_partition_table_is_refused_as_what_it_is(monkeypatch, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("ssh: {authorized_keys: [ssh-ed25519 AAAA]}\nrouter: {uplink: {type: ethernet}}\n" * 40)
    said = flash_refusal(monkeypatch, tmp_path, "--image", str(config))
    assert f"{config} has no partition table (no MBR boot signature 0x55AA at byte 510, no GPT header)" in said
    assert "it is a text file of 3.0 KiB (its first line: 'ssh: {authorized_keys: [ssh-ed25519 AAAA...')" in said

    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(4096))
    said = flash_refusal(monkeypatch, tmp_path, "--image", str(zeros))
    assert "it is a file of 4.0 KiB that starts with bytes 00 00 00 00 00 00 00 00, not a disk image" in said


def test_a_gpt_disk_without_a_protective_mbr_is_still_an_image(tmp_path):
    from ceil.flash.imagefile import check_image_file

    gpt = tmp_path / "gpt.img"
    gpt.write_bytes(bytes(512) + b"EFI PART" + bytes(8192))
    assert check_image_file(str(gpt)) == 512 + 8 + 8192


def test_the_manifest_given_as_the_image_names_the_image_beside_it(monkeypatch, tmp_path):
    import json

    image = tmp_path / "ceil-router.img"
    image.write_bytes(mbr([(0x83, 1, 7)]) + bytes(3584))
    manifest = tmp_path / "ceil-router.json"
    manifest.write_text(json.dumps({"role": "router", "output": {"path": image.name, "size": 4096}}, indent=2))
    said = flash_refusal(monkeypatch, tmp_path, "--image", str(manifest))
    assert f"{manifest} is the manifest a bake writes beside its image, not the image" in said
    assert f"flash the image it describes, {image} (--image {image}, or --role router)" in said
    assert "changed after baking" not in said


def test_a_baked_image_without_its_manifest_is_refused_and_another_image_is_not(tmp_path):
    from ceil.flash.cli import check_against_manifest

    baked = tmp_path / "ceil-node1.img"
    baked.write_bytes(mbr([(0x83, 1, 7)]) + bytes(3584))
    result = CliRunner().invoke(flash_command, ["--role", "node1", "--out", str(tmp_path), "--device", "/dev/sdz"])
    said = " ".join(str(result.exception).split())
    assert result.exit_code != 0 and isinstance(result.exception, CeilError)
    assert f"{baked} has no manifest beside it (ceil-node1.json)" in said
    assert said.endswith("bake it again (python bake.py --role node1).")

    other = tmp_path / "raspios.img"  # not baked by ceil: nothing to check it against
    other.write_bytes(baked.read_bytes())
    assert check_against_manifest(other) is None
