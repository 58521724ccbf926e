"""What runs the phases: ``daram run`` (``run``), ``plan``, ``release``, ``follow``, ``demo`` and the measured
speeds ``plan`` forecasts with. The only part of the pipeline that may import every phase."""
