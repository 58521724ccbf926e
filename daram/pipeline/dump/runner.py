"""Running the teacher over one chunk of rows: its body, then its tempered LM head a slice of positions at a
time through its kind's kernel (``dump_kinds.py``), into the kind's arrays as they are stored."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from daram.errors import DaramError
from daram.pipeline.dump_kernels import slice_positions
from daram.pipeline.dump_kinds import dump_kind
from daram.pipeline.dump.padded_vocab import real_rows
from daram.storage import teacher_format

CPU_BATCH_TOKENS = 4096  # automatic batch size on CPU: rows of about this many tokens per forward


@dataclass
class ChunkResult:
    arrays: tuple[np.ndarray, ...]  # the kind's arrays as stored, ids first, [rows, seq_len, width] each
    entropy_sum: float  # sum over positions of the teacher's entropy at T (nats)
    seconds: float = 0.0
    padding: dict[str, float] = field(default_factory=dict)  # a padded head: the mass on padding ids (sum, max)

    @property
    def positions(self) -> int:
        return int(self.arrays[0].shape[0] * self.arrays[0].shape[1])


def resolve_dtype(dtype: str, device) -> str:
    """``auto``: float16 on CUDA (the GPU's fast path), float32 elsewhere (float16 matmuls are slow on CPUs)."""
    if dtype != "auto":
        if device.type == "cpu" and dtype != "float32":
            print(f"note: {dtype} on CPU is slow; --dtype float32 (or auto) is faster there", file=sys.stderr)
        return dtype
    return "float16" if device.type == "cuda" else "float32"


class TeacherRunner:
    """The teacher's body and tempered LM head, run over one chunk of rows at a time."""

    def __init__(self, model, kind: str, width: int, temperature: float, device, batch_size: int, manifest) -> None:
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise DaramError(f"teacher's output layer is a {type(head).__name__}; daram expects a Linear LM head")
        vocab = manifest.tokenizer.vocab_size
        # A padded head (more rows than ids): the dump reads the real rows; the mass on the others is measured.
        self.head, self.padding_mass = real_rows(head, vocab, temperature)
        context = getattr(model.config, "max_position_embeddings", None)
        if context is not None and manifest.seq_len > context:
            raise DaramError(f"the store's rows hold {manifest.seq_len} tokens; the teacher's context is {context}")
        self.model = model
        self.body = model.base_model
        self.format, self.ops = teacher_format(kind), dump_kind(kind)
        self.width, self.device = width, device
        self.auto_batch = batch_size == 0
        if self.auto_batch:  # CPU: about CPU_BATCH_TOKENS per forward; CUDA: a whole chunk, halved on OOM
            batch_size = max(1, CPU_BATCH_TOKENS // manifest.seq_len) if device.type == "cpu" else manifest.rows_per_chunk
        self.batch_size = min(batch_size, manifest.rows_per_chunk)  # batches never cross chunks
        self.slice = min(slice_positions(vocab, device), self.batch_size * manifest.seq_len)
        self.buffers = [torch.empty(self.slice, vocab, dtype=torch.float32, device=device) for _ in range(2)]
        self.token_dtype = np.dtype(manifest.token_dtype)
        self.dtypes = [np.dtype(spec.numpy_dtype(manifest.token_dtype)) for spec in self.format.arrays]
        self.device_name = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
        self.dtype_name = str(head.weight.dtype).removeprefix("torch.")
        self._check_head_path()

    def hidden_states(self, input_ids):
        return self.body(input_ids=input_ids, use_cache=False).last_hidden_state

    def _check_head_path(self) -> None:
        """The body + head path must give the model's own logits (refuses models that rescale or cap them)."""
        with torch.inference_mode():
            probe = torch.arange(8, device=self.device).unsqueeze(0)
            expected = self.model(input_ids=probe, use_cache=False).logits[0, :, : self.head.weight.shape[0]].float()
            expected /= self.head.temperature
            if not torch.isfinite(expected).all():
                raise DaramError(
                    f"teacher {type(self.model).__name__} gives non-finite logits on a probe of 8 tokens "
                    f"(dtype {self.dtype_name}); its weights are damaged or overflow this dtype"
                )
            ours = self.head(self.hidden_states(probe)[0], self.buffers[0])
            if not torch.allclose(ours, expected, rtol=1e-2, atol=1e-2 * float(expected.abs().max()) + 1e-4):
                raise DaramError(
                    f"teacher {type(self.model).__name__} post-processes its logits after the LM head; "
                    f"daram's sliced dump does not support it"
                )

    def run_chunk(self, tokens: np.ndarray, uniforms=None) -> ChunkResult:
        """The teacher's distributions for one chunk of rows; on CUDA with batch_size 0, halve on OOM."""
        while True:
            try:
                return self._run_chunk(tokens, uniforms)
            except torch.OutOfMemoryError:
                if not self.auto_batch or self.batch_size == 1 or self.device.type != "cuda":
                    raise DaramError(
                        f"out of memory on {self.device_name} at batch size {self.batch_size} "
                        f"(rows of {tokens.shape[1]} tokens); lower --batch-size"
                    ) from None
                self.batch_size //= 2
                torch.cuda.empty_cache()
                print(f"out of memory: batch size -> {self.batch_size}", file=sys.stderr)

    def _run_chunk(self, tokens: np.ndarray, uniforms) -> ChunkResult:
        rows, seq_len = tokens.shape
        shapes = [(rows * seq_len, self.width) if spec.per_id else (rows * seq_len,) for spec in self.format.arrays]
        out = [np.empty(shape, dtype=dtype) for shape, dtype in zip(shapes, self.dtypes)]
        logits, scratch = self.buffers
        entropy_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        padding_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        padding_max = torch.zeros((), dtype=torch.float32, device=self.device)
        batch_ids = torch.from_numpy(tokens.astype(np.int64))
        for lo in range(0, rows, self.batch_size):
            hidden = self.hidden_states(batch_ids[lo : lo + self.batch_size].to(self.device))
            hidden = hidden.reshape(-1, hidden.shape[-1])
            base = lo * seq_len  # flat position of this batch's first token within the chunk
            for start in range(0, hidden.shape[0], self.slice):
                z = self.head(hidden[start : start + self.slice], logits)
                at = slice(base + start, base + start + z.shape[0])
                if self.padding_mass is not None:  # before the kernel consumes z
                    mass = self.padding_mass(hidden[start : start + self.slice], z)
                    padding_sum += mass.sum(dtype=torch.float64)
                    padding_max = torch.maximum(padding_max, mass.max())
                arrays, entropy = self.ops.kernel(z, scratch, None if uniforms is None else uniforms[at], self.width)
                ids, *values = arrays
                out[0][at] = ids.cpu().numpy()  # int64 -> the store's token dtype
                for array, value, dtype in zip(out[1:], values, self.ops.value_dtypes):
                    array[at] = value.to(dtype).cpu().numpy()  # cast on the device: less to copy
                entropy_sum += entropy.sum(dtype=torch.float64)
        padding = {} if self.padding_mass is None else {"padding_mass_sum": float(padding_sum), "padding_mass_max": float(padding_max)}
        return ChunkResult(tuple(a.reshape(rows, seq_len, *a.shape[1:]) for a in out), float(entropy_sum), padding=padding)
