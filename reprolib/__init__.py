"""reprolib: the shared library behind the backdoor-defense reproduction book."""

__version__ = "0.1.0"
