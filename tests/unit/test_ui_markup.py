"""Text from cluster.yaml, the command line or a card (paths, names, partition labels) printed
through Rich is text, not markup: "[/]" crashed the bake's error line (issue 18 #6)."""

from __future__ import annotations

from ceil import ui


def test_a_step_detail_with_markup_is_printed_as_written(capsys):
    with ui.step("write_seed", "/tmp/[/]odd [bold]dir"):
        pass
    out = capsys.readouterr().err
    assert "/tmp/[/]odd [bold]dir" in out
