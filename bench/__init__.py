"""The benchmark suite of SPEC section 9: ``python -m bench`` (``make bench``)."""
