"""Run outputs: schemas (``schema``), sinks (``writer``, ``tensorboard``) and the ``Result`` reader."""
