"""One module per public dataset layout; each defines Converter subclasses for ``ofa-ds prepare``."""
