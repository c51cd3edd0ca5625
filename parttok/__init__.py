"""parttok."""
