"""emplifai: data-versioned experiments for Japanese empathetic medical dialogue."""

__version__ = "0.1.0"
