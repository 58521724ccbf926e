"""The commands' work, by phase: ``prepare/``, ``dump/``, ``train/`` and ``eval/`` each hold their recipe and its
parts, ``job/`` runs the phases; the modules directly here are the parts several phases share
(docs/architecture.md)."""
