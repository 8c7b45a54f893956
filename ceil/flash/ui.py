"""What the person at the keyboard sees: the target, the question, the progress bars, the summary.

Kept apart from the flow so tests can run the whole flash with output captured in a string.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.prompt import Confirm
from rich.table import Table

from ceil.errors import CeilError
from ceil.flash.device import Device, human_size


class RichUI:
    def __init__(self, console: Console | None = None, interactive: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.interactive = sys.stdin.isatty() if interactive is None else interactive

    def show_target(self, device: Device, image: str, image_size: int, mapped: int) -> None:
        table = Table(title=f"Target {device.path}", show_header=False, box=None)
        table.add_row("model", device.model or "unknown")
        table.add_row("size", f"{human_size(device.size)} ({device.size:,} bytes)")
        table.add_row("serial", device.serial or "not reported")
        table.add_row("transport", f"{device.transport or 'unknown'}"
                      f"{', removable' if device.removable else ''}")
        for p in device.partitions or ():
            what = " ".join(x for x in (p.fstype, p.label and f"'{p.label}'") if x)
            where = f" mounted at {', '.join(p.mountpoints)}" if p.mountpoints else ""
            # A partition label is anyone's text (a card from elsewhere): shown, not read as markup.
            table.add_row("partition", escape(f"{p.path} {human_size(p.size)} {what}{where}".rstrip()))
        if not device.partitions:
            table.add_row("partitions", "none")
        self.console.print(table)
        self.console.print(f"Image {escape(str(image))}: {human_size(image_size)}, of which "
                           f"{human_size(mapped)} hold data and will be written.")

    def confirm(self, device: Device) -> None:
        if not self.interactive:
            raise CeilError(f"not writing {device.path} without confirmation: stdin is not a "
                            "terminal. Pass --yes to confirm in scripts.")
        question = (f"Erase everything on {device.path} ({device.description}) "
                    "and write the image?")
        if not Confirm.ask(question, default=False, console=self.console):
            raise CeilError(f"not confirmed: {device.path} was left untouched.")

    def info(self, message: str) -> None:
        self.console.print(message)

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
