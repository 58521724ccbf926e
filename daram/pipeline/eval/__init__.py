"""``daram eval``: :mod:`daram.pipeline.eval.evaluate` is the recipe; ``downstream`` holds the tasks, ``finetune``
and ``fewshot`` score them, ``stats`` and ``report`` summarise and write the results."""
