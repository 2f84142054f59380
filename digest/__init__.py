"""digest: a self-hostable daily research-paper digest."""

__version__ = "0.1.0"
