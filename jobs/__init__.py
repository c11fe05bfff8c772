"""The example jobs: ``trainer train --job fashion_mnist`` (the default) or ``--job digits``.

Each is also a template for your own job: ``trainer jobs`` lists them with
their files. An installed package carries this folder as ``trainer.jobs``
(see pyproject.toml); ``python -m trainer.jobs.launch`` is the submitit
launcher there (``python jobs/launch.py`` in a checkout).
"""
