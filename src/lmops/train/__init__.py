"""Training: the plain single-process loop (loop.py) and its parts; the Ray Train wrapper reuses them."""
