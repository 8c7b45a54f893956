"""The command line's subcommands are imported by name when they run: each name leads to its
command, and a command loads its own modules, not the bake's."""

from __future__ import annotations

import subprocess
import sys

import click

from ceil.cli import SUBCOMMANDS, cli
from tests.bake_cli import REPO


def test_every_subcommand_name_leads_to_the_command_of_that_name():
    ctx = click.Context(cli)
    for name in SUBCOMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert set(SUBCOMMANDS) | {"doctor", "flavors"} == set(cli.list_commands(ctx))


def test_a_command_other_than_the_bake_does_not_load_the_bakes_modules():
    probe = ("import sys; from ceil.cli import main\n"
             "try:\n    main(['vpn-client', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('ceil.bakery', 'ceil.catalog', 'ceil.features') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("[]"), done.stdout + done.stderr


def test_a_mistyped_command_is_answered_with_the_one_meant():
    """click's hint is made from the commands it knows; the lazy ones are known by name only."""
    done = subprocess.run([sys.executable, str(REPO / "bake.py"), "statu"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "No such command 'statu'" in done.stderr and "Did you mean 'status'" in done.stderr


def test_every_option_of_every_command_says_what_it_does_in_help():
    """`bake.py init --help` listed --flavor with its choices and nothing else: not what a flavor
    is, nor where the list of them is explained."""
    ctx = click.Context(cli)

    def silent(command, path):
        found = [f"{path} {p.opts[0]}" for p in command.params
                 if isinstance(p, click.Option) and p.name != "help" and not p.help]
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                found += silent(command.get_command(ctx, name), f"{path} {name}")
        return found

    assert silent(cli, "bake.py") == []


def test_every_readme_section_the_code_points_to_is_there():
    """`datastore backup` sent a user who could not reach the server to README "Flash, boot,
    check"; the paths into the cluster LAN are under "Your way in". Every (README, "SECTION") in
    ceil/ names a heading of README.md or a paragraph's bold lead, and one said where the way into
    the cluster LAN is told (beside the VPN or --via) names "Your way in"."""
    import re

    readme = (REPO / "README.md").read_text()
    sections = set(re.findall(r"^#+ (.+)$", readme, re.M)) | set(re.findall(r"^\*\*([^*.,:]+)", readme, re.M))
    pointers = []
    for path in sorted((REPO / "ceil").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"README, \\?[\"']([^\"'\\]+)\\?[\"']", text):
            around = text[max(0, m.start() - 300):m.end() + 300]
            pointers.append((str(path.relative_to(REPO)), m.group(1), "VPN" in around or "--via" in around))
    assert "Your way in" in sections and len(pointers) > 3, (sorted(sections), pointers)
    assert [(where, section) for where, section, _ in pointers if section not in sections] == []
    assert [(where, section) for where, section, way_in in pointers if way_in and section != "Your way in"] == []
