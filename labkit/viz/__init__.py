"""Views for the notebooks (matplotlib, ipywidgets): one module per view."""
