"""write_private: the one writer of owner-only files (secrets, the admin kubeconfig, known_hosts)."""

import os

import pytest

from ceil.privatefile import write_private


def test_a_private_file_is_0600_and_holds_text_or_bytes(tmp_path):
    path = tmp_path / "made" / "here" / "kubeconfig"
    write_private(path, "apiVersion: v1\n")
    assert path.read_text() == "apiVersion: v1\n"
    assert path.stat().st_mode & 0o777 == 0o600
    write_private(path, b"\x00key", durable=True)
    assert path.read_bytes() == b"\x00key"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "known_hosts"
    write_private(path, "old\n")

    def refuse(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_private(path, "new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts"]
