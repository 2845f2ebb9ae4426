"""Test harness for the agentvault integration suite (see ../README.md)."""
