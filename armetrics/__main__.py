"""``python -m armetrics``: the ``armetrics`` command (:func:`armetrics.cli.main`)."""

from .cli import main

if __name__ == "__main__":
    main()
