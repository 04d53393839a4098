"""servomexd: a data-acquisition daemon for Servomex SERVOPRO 4000-series gas analysers."""

__version__ = "0.1.0"
