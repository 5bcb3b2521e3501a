"""Test support shared by tests/ and bench/ (never shipped in the package). Import as `support.<module>`:
pytest puts tests/ on sys.path (pyproject `pythonpath`), bench scripts insert it themselves."""
