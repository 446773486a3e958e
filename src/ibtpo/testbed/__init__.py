"""The CPU testbed: step-structured arithmetic tasks (``task``: sum, ``chain``), the tiny model and tokenizer, and the
supervised warm-up. Importing it registers each task's exact answer check as a reward (``reward_fn=sum``/``chain``)."""

from ibtpo.testbed import chain, task  # noqa: F401  (each registers its reward)
