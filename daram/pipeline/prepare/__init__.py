"""Phase zero, ``daram prepare``: :mod:`daram.pipeline.prepare.prepare` is the recipe; ``sources`` finds and reads
the text, ``encode`` tokenizes it in worker processes."""
