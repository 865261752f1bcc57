"""The lowest layer: record types, errors, the taxonomy and small helpers every layer shares."""
