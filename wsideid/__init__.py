"""wsideid: de-identify whole-slide images."""
__version__ = "0.1.0"
