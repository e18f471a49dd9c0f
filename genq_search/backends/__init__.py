"""Search backends behind one interface: ``embedded`` (in-process, no server) and ``opensearch``."""

from genq_search.backends.base import SearchBackend

__all__ = ["SearchBackend"]
