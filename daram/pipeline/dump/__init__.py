"""Phase one, ``daram teacher-dump``: :mod:`daram.pipeline.dump.teacher_dump` is the recipe; ``runner`` runs the
teacher on a chunk, ``writer`` writes the shards, ``uniforms`` draws the seeded uniforms, ``stats`` summarises a
shard and ``padded_vocab`` handles a head wider than the tokenizer."""
