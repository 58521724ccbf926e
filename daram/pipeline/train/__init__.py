"""Phase two, ``daram student-train``: :mod:`daram.pipeline.train.student_train` is the recipe (setup -> fit ->
finish); the other modules are its parts, each small and tested on its own."""
