"""panelscan library: pure Python + torch. No Prefect imports live here."""

__version__ = "0.1.0"
