"""Pure renderers: text or a matplotlib Figure in, nothing written (files/ writes them)."""
