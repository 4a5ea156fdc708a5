"""Model backends behind one streaming interface (see `base.py`)."""
