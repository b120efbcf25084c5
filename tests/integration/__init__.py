"""Integration tests against a real Prefect server (a package, so its conftest does not shadow tests/conftest)."""
