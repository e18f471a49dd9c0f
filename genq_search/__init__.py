"""genq-search: adapt bi-encoders to an index's own documents and compare lexical, dense and hybrid retrieval."""

__version__ = "0.1.0"
