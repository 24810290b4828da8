"""condure: a ZHTTP connection manager, wire-compatible with Condure 1.10."""

__version__ = "0.1.0"
