"""mlsys engines: plain Python, PyTorch, Snorkel and GX code, free of Prefect."""

__version__ = "0.1.0"
