"""Teachers whose LM head has more rows than their tokenizer has ids: embedding matrices padded to a multiple of 64
or 128 (KoGPT2-style 51,200 ids in 51,264 rows; Qwen2's 151,936 ids in 152,064).

Padding ids are never stored: the dump's head is the first ``vocab`` rows, so the stored distribution is the teacher's
renormalized over the ids a text can hold. The mass the teacher puts on the padding rows at T is measured per
position (:class:`PaddingMass`), recorded in the shard's statistics, and a teacher that puts real mass there is
refused: its distribution over real ids would be missing that mass, and padding rows that carry it were trained
for something the tokenizer does not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from daram.errors import DaramError

if TYPE_CHECKING:  # torch loads with the teacher, not with the command line
    import torch

# The most mass at T any position may put on padding ids. A padding row that training never used as a label has
# logits far below the real ones (its mass is ~1e-10 and less); 1e-3 is a thousandth of a position's distribution.
PADDING_MASS_LIMIT = 1e-3


class PaddingMass:
    """The teacher's probability at T on its padding rows, per position: ``sum_pad exp(z) / sum_all exp(z)``."""

    def __init__(self, head: torch.nn.Linear, vocab: int, temperature: float) -> None:
        from daram.pipeline.dump_kernels import TemperedHead

        self.padding = TemperedHead(
            head.weight.detach()[vocab:],
            None if head.bias is None else head.bias.detach()[vocab:].float() / temperature,
            temperature,
        )
        self.rows = head.weight.shape[0] - vocab
        self.buffer: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor, z_real: torch.Tensor) -> torch.Tensor:
        """Mass ``(n,)`` on the padding rows of positions ``hidden`` ``(n, H)``; ``z_real`` ``(n, vocab)`` holds the
        real ids' ``logits / T`` (read, not changed)."""
        import torch

        if self.buffer is None or self.buffer.shape[0] < hidden.shape[0] or self.buffer.device != hidden.device:
            self.buffer = torch.empty(hidden.shape[0], self.rows, dtype=torch.float32, device=hidden.device)
        lse_padding = torch.logsumexp(self.padding(hidden, self.buffer), -1)
        return torch.exp(lse_padding - torch.logaddexp(torch.logsumexp(z_real, -1), lse_padding))


def real_rows(head: torch.nn.Linear, vocab: int, temperature: float) -> tuple[TemperedHead, PaddingMass | None]:
    """The dump's head over the tokenizer's ``vocab`` ids, and the meter of the rest (None when nothing is padded).

    A head with fewer rows than the tokenizer has ids cannot give a distribution over its vocabulary: refused.
    """
    from daram.pipeline.dump_kernels import TemperedHead

    rows = head.weight.shape[0]
    if rows < vocab:
        raise DaramError(f"teacher's LM head has {rows:,} outputs but its tokenizer (and the store) has {vocab:,} ids")
    bias = None if head.bias is None else head.bias.detach()[:vocab].float() / temperature
    real = TemperedHead(head.weight.detach()[:vocab], bias, temperature)
    return real, (PaddingMass(head, vocab, temperature) if rows > vocab else None)


def check_padding_mass(largest: float, teacher: str, shard: int, rows: tuple[int, int], vocab: int) -> None:
    """Refuse a chunk where some position's mass on the padding ids exceeds :data:`PADDING_MASS_LIMIT`."""
    if largest > PADDING_MASS_LIMIT:
        raise DaramError(
            f"teacher {teacher!r} puts up to {largest:.3g} of a position's probability on padding ids (LM head rows "
            f">= {vocab:,}, which its tokenizer never produces) on shard {shard}, rows {rows[0]}-{rows[1]}; more than "
            f"{PADDING_MASS_LIMIT:g} is refused: its distribution over real ids would be missing that mass"
        )


def padding_stats(chunk_stats: Iterable[Mapping[str, Any]], positions: int) -> dict[str, float]:
    """A shard's ``padding_mass_mean`` and ``padding_mass_max`` from its chunks' (nothing for an unpadded teacher)."""
    chunks = [c for c in chunk_stats if "padding_mass_sum" in c]
    if not chunks:
        return {}
    return {"padding_mass_mean": sum(c["padding_mass_sum"] for c in chunks) / positions,
            "padding_mass_max": max(c["padding_mass_max"] for c in chunks)}
