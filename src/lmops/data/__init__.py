"""Data stages: build (raw sources -> dataset/) and tokenize (dataset/ -> tokens/)."""
