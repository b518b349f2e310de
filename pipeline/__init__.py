"""Face-mask, gender and age classification suite: prepare → train → predict → vote."""

__version__ = "0.1.0"
