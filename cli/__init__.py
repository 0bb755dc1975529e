"""The ``autolabel`` command line (see ``cli.main``)."""
