"""Bring tangtoc to the trainers and loggers users already have.

* :mod:`tangtoc.integrations.hf` — ``TangtocCallback`` for the transformers ``Trainer`` (needs ``tangtoc[hf]``);
* :mod:`tangtoc.integrations.lightning` — ``TangtocCallback`` for Lightning (needs ``tangtoc[lightning]``);
* :mod:`tangtoc.integrations.loggers` — TensorBoard, W&B and MLflow loggers for :func:`tangtoc.fit`'s ``callbacks=``.

Nothing here is imported by ``import tangtoc``, and importing this package imports none of those libraries: each
module imports its own when it is imported (the callbacks) or used (the loggers), and says which extra to install.
"""
