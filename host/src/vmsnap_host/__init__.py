"""vmsnap host."""
