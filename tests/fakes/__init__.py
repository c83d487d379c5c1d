"""Local servers that speak hosted providers' real wire formats, for tests without network."""
