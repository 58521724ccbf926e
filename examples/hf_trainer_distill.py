"""Distil a student with Hugging Face's ``Trainer`` from a daram store: the teacher never enters training memory.

    python examples/hf_trainer_distill.py --store work/store.zarr --student work/student-init --out work/hf-student

``--student`` is any causal LM directory over the store's tokenizer (a `daram student-train` export, or a new
model saved with ``save_pretrained``). The store's batches (``daram.data.StoreBatches``) already hold the
teacher's targets; ``compute_loss`` turns the student's logits into `student-train`'s loss (``daram.losses.kd_loss``).
Needs ``accelerate`` (Trainer's own dependency). docs/own-trainer.md explains each part.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from daram.data import StoreBatches
from daram.losses import kd_loss


class DistillTrainer(Trainer):
    """A ``Trainer`` whose data is a daram store and whose loss is daram's."""

    def __init__(self, *args, store_batches: StoreBatches, alpha_kd: float = 1.0, alpha_ce: float = 0.0, **kwargs):
        super().__init__(*args, train_dataset=store_batches, **kwargs)
        self.store_batches, self.alpha_kd, self.alpha_ce = store_batches, alpha_kd, alpha_ce
        self.model_accepts_loss_kwargs = False  # kd_loss is a mean per batch: Trainer averages over accumulation

    def get_train_dataloader(self):
        # The dataset batches itself and splits by rank and worker: no sampler, no collator, no re-sharding.
        return torch.utils.data.DataLoader(self.store_batches, batch_size=None,
                                           num_workers=self.args.dataloader_num_workers)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"])
        loss = kd_loss(outputs.logits, inputs, self.store_batches.temperature, self.alpha_kd, self.alpha_ce)
        return (loss, outputs) if return_outputs else loss


def main(argv: list[str] | None = None) -> DistillTrainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--alpha-kd", type=float, default=1.0)
    parser.add_argument("--alpha-ce", type=float, default=0.0)
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.student)
    batches = StoreBatches(args.store, batch_size=args.batch_size)
    training = TrainingArguments(output_dir=args.out, max_steps=args.max_steps, learning_rate=args.lr,
                                 logging_steps=1, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available())
    trainer = DistillTrainer(model=model, args=training, store_batches=batches, alpha_kd=args.alpha_kd,
                             alpha_ce=args.alpha_ce)
    trainer.train()
    trainer.save_model(args.out)
    return trainer


if __name__ == "__main__":
    main()
