"""Flashing a baked image to an SD card safely and fast, on Linux and macOS.

device (what a disk is) <- linux / macos (discovery per platform) -> safety (refusals)
-> blockmap (which ranges to write) -> writer (write, read back, compare) -> flow (the steps)
-> cli (`bake.py flash`).
"""
