"""How each model trains: a :class:`~cifargen.recipes.base.Recipe` per model (``vae.py``,
``acgan.py``, ``classifier.py``), run by the one loop in :mod:`cifargen.training`."""
