"""The application floor: the ``contrastlab`` command and what its sub-commands run.

``cli`` parses the command line; ``fit`` is the Lightning glue of pretraining (trainer,
callbacks, checkpoints, the summary line); ``evaluate`` the kNN, linear-probe and fine-tuning
commands; ``report`` and ``figures`` the HTML report and its pictures; ``export`` the backbone
files; ``reproduce`` the grids. Everything here builds on the library below (``data``,
``views``, ``models``, ``negatives``, ``methods``, ``eval``, ``runs``), and nothing in the
library imports this package.
"""
