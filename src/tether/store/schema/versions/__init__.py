"""One module per schema revision, ``rNNNN_<slug>.py``, ``revision = "NNNN"``; never edit one that shipped."""
