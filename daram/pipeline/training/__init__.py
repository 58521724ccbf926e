"""The parts of ``student-train``, each small and tested on its own; :mod:`daram.pipeline.student_train`
puts them together as a recipe (setup -> fit -> finish)."""
