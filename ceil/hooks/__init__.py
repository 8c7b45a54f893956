"""Feature hooks: one module per firstboot/<feature>/ that needs code (see docs/features.md)."""
