"""The ground floor: documents and vocabulary every other layer shares (options, results, the
profile / accuracy-table / plan schemas). Imports nothing from edgekit but errors, figures, jsonio."""

__version__ = "0.1.0"
