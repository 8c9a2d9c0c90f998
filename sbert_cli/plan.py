"""What auto batching means on each device, and the frozen plan a job carries: windows, rows and tokens a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DeviceDefaults:
    """What `auto` means for the batching options on one kind of device."""

    chunk_size: int  # rows read, sorted and planned at a time
    batch_size: int  # rows in one forward pass
    max_tokens: int  # padded tokens in one forward pass
    batch_cost: int  # the fixed cost of one forward pass, in tokens' worth of work, for placing cuts


# A CPU pays little per forward pass beyond the arithmetic, and its caches favour batches of a few thousand
# tokens. A GPU runs a small batch almost as fast as a full one and its host must keep up, so it gets
# batches of a quarter-million padded tokens (a few GiB of activations for bert-base in fp16), a row cap
# that only binds on texts under 8 tokens, and windows big enough to hold several such batches.
DEVICE_DEFAULTS = {
    "cpu": DeviceDefaults(chunk_size=10_000, batch_size=32, max_tokens=16_384, batch_cost=32),
    "cuda": DeviceDefaults(chunk_size=50_000, batch_size=32_768, max_tokens=262_144, batch_cost=2048),
}


@dataclass(frozen=True)
class BatchShape:
    """The rows and padded tokens a batch at which one backend's kernels run fastest, where that differs from its
    device's defaults (a backend's `batch_shape`; BatchPlan.for_backend puts it in place of the defaults)."""

    batch_size: int
    max_tokens: int


# OpenVINO runs each batch on one core (backends.openvino_bert), and a batch of about two thousand tokens keeps
# its activations near that core: against the CPU's 32 rows and 16,384 tokens, 128 rows and 2,048 tokens (8 rows
# of 256, 128 of 16) ran the bench's batches 4-5% faster at bf16 and 25-30% faster at fp32, with less memory
# (docs/speed.md). Smaller budgets measured no faster.
OPENVINO_BATCH_SHAPE = BatchShape(batch_size=128, max_tokens=2048)


def device_kind(device: str) -> str:
    """'cuda' for 'cuda' and 'cuda:N', else 'cpu'."""
    return "cuda" if device.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class BatchPlan:
    """How rows are grouped: windows of `chunk_size` rows, batches under `batch_size` rows and `max_tokens`.

    None means auto: the device's default (DEVICE_DEFAULTS), filled in by for_device once the device is known.
    """

    chunk_size: int | None = None
    batch_size: int | None = None
    max_tokens: int | None = None
    batch_cost: int | None = None
    # What for_device filled with the device's defaults among the batch's rows and tokens: the backend's own shape
    # may take their place once it is loaded (for_backend); what the user set stays.
    defaulted: frozenset[str] = field(default=frozenset(), compare=False)

    def for_device(self, device: str) -> BatchPlan:
        """The plan with every auto value set to the default of `device` ('cpu', 'cuda', 'cuda:1')."""
        defaults = DEVICE_DEFAULTS[device_kind(device)]
        return BatchPlan(
            chunk_size=self.chunk_size or defaults.chunk_size,
            batch_size=self.batch_size or defaults.batch_size,
            max_tokens=self.max_tokens or defaults.max_tokens,
            batch_cost=defaults.batch_cost if self.batch_cost is None else self.batch_cost,
            defaulted=self.defaulted | {name for name in ("batch_size", "max_tokens") if getattr(self, name) is None},
        )

    def for_backend(self, shape: BatchShape | None) -> BatchPlan:
        """The plan with the backend's rows and tokens a batch (None: the device's) wherever they were left auto."""
        if shape is None:
            return self
        return replace(self, **{name: getattr(shape, name) for name in self.defaulted})

    def with_token_budget(self, max_tokens: int | None) -> BatchPlan:
        """The same plan with at most `max_tokens` padded tokens a batch (None: unchanged)."""
        if max_tokens is None or (self.max_tokens is not None and self.max_tokens <= max_tokens):
            return self
        return replace(self, max_tokens=max_tokens)

    def cut(self, lengths: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Batches of row indices for rows of these token counts (see plan_batches)."""
        if self.batch_size is None or self.max_tokens is None or self.batch_cost is None:
            raise ValueError("an auto plan cannot cut batches; call for_device first")
        # Imported here: the CLI builds plans for --help and option checks without loading numpy.
        from sbert_cli.batching import plan_batches

        return plan_batches(lengths, self.batch_size, self.max_tokens, self.batch_cost)
