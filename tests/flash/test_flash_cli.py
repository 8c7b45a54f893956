"""The click command: option wiring and refusals surfacing as CeilError (non-zero exit)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

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
    for role, image in (("router", "/x.img"), (None, None)):
        with pytest.raises(CeilError, match="either --role NAME"):
            resolve_image(role, image, "out")


def test_refusals_exit_non_zero_with_a_ceil_error(tmp_path):
    missing = CliRunner().invoke(flash_command, ["--role", "node1", "--out", str(tmp_path),
                                                 "--device", "/dev/sdz", "--yes"])
    assert missing.exit_code != 0 and isinstance(missing.exception, CeilError)
    assert "ceil-node1.img not found" in str(missing.exception)

    image = tmp_path / "ceil-router.img"
    image.write_bytes(bytes(4096))
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
    img.write_bytes(b"baked image bytes" * 100)
    (tmp_path / "ceil-router.json").write_text(json.dumps({"output": {"sha256": hashlib.sha256(b"other").hexdigest()}}))
    result = CliRunner().invoke(flash_command, ["--role", "router", "--out", str(tmp_path), "--device", "/dev/nonexistent-ceil"])
    assert result.exit_code != 0
    assert "does not match its manifest" in str(result.exception)
