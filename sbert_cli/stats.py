"""What a run did and where its time went: counted by the embedding stage and the run, printed by the report."""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("read", "cache", "tokenize", "forward", "write")


@dataclass
class EncodeStats:
    """What a run did and where its time went (stage seconds overlap: they run in separate threads)."""

    rows: int = 0
    rejected: int = 0
    resumed_rows: int = 0
    read_rows: int = 0  # data rows the readers gave: every one must be written, rejected or resumed (accounted)
    shards_written: int = 0
    shards_resumed: int = 0
    truncated: int = 0
    cached: int = 0  # rows whose vector came from the cache
    repeated: int = 0  # rows whose text came earlier in the same window
    encoded: int = 0  # texts that went through the model
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    fp32_rows: int = 0  # rows whose vectors were not finite at the run's precision, re-run at fp32
    out_of_memory: int = 0  # batches that ran out of device memory and were re-cut smaller
    token_budget: int | None = None  # the padded tokens a batch may hold after out-of-memory cut it down
    load_seconds: float = 0.0
    one_time_seconds: float = 0.0  # a one-time step of the model's load (its conversion): not the rows' time
    seconds: float = 0.0
    nothing_to_do: bool = False
    repeated_ids: str | None = None  # --id-column ids that repeat (--on-error skip keeps their rows), as the summary says it
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def unaccounted(self) -> int:
        """Rows read that are neither written nor rejected nor an earlier run's: never anything but 0 in a success."""
        return self.read_rows - self.rows - self.rejected - self.resumed_rows

    @property
    def rows_per_second(self) -> float:
        """Rows over the run's seconds, less a one-time step's (reported on its own)."""
        seconds = self.seconds - self.one_time_seconds
        return self.rows / seconds if seconds > 0 else 0.0
