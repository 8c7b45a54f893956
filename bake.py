#!/usr/bin/env python3
"""ceil: bake SD-card images for a self-provisioning Raspberry Pi k3s cluster. See --help."""

from ceil.cli import main

if __name__ == "__main__":
    main()
