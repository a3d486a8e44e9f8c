"""Speed: the timed generations' latencies, times to first token and token rates, as medians and spreads.

measure.generate_timed times each generation (its synchronisation and first-token stamp are the
measurement contract) and adds each sample here; result() summarises them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import List


@dataclass
class SpeedMetrics:
    """The speed metrics of a run; the field names are the MLflow metric names. A plain dataclass, not a
    trackers Result: it has no tags, and results record it as they always did."""
    ttft_s: float  # median time to first token
    ttft_iqr_s: float
    latency_s: float  # median end-to-end generate
    latency_p90_s: float
    latency_iqr_s: float
    tokens_per_s: float  # new tokens of one sequence / median latency (the T4 notebook's definition)
    throughput_tokens_per_s: float  # batch_size x new tokens / median latency: what the machine delivers
    prefill_tokens_per_s: float  # prompt tokens of the whole batch / TTFT, median over samples
    decode_tokens_per_s: float  # per sequence: tokens after the first / time after the first, median
    decode_tokens_per_s_iqr: float
    new_tokens: int
    timed_samples: int  # timed generate calls (each of batch_size sequences)
    phase_warmup_s: float = 0.0  # wall time of the untimed warm-up generations
    phase_generation_s: float = 0.0  # wall time of the timed generations, all samples


class LatencyTracker:
    """One timed generate call after another: add() each, result() at the end."""

    def __init__(self, new_tokens: int, batch_size: int):
        self.new_tokens, self.batch_size = new_tokens, batch_size
        self.latencies: List[float] = []
        self.ttfts: List[float] = []
        self.prefill_rates: List[float] = []
        self.decode_rates: List[float] = []

    def add(self, prompt_tokens: int, latency_s: float, ttft_s: float) -> None:
        """One generate call: `prompt_tokens` of the whole batch, its latency and time to first token."""
        self.latencies.append(latency_s)
        self.ttfts.append(ttft_s)
        self.prefill_rates.append(prompt_tokens / ttft_s)
        if self.new_tokens > 1:
            self.decode_rates.append((self.new_tokens - 1) / (latency_s - ttft_s))

    def result(self) -> SpeedMetrics:
        latency, latency_iqr = median_iqr(self.latencies)
        ttft, ttft_iqr = median_iqr(self.ttfts)
        decode, decode_iqr = median_iqr(self.decode_rates) if self.decode_rates else (float("nan"), 0.0)
        p90 = (statistics.quantiles(self.latencies, n=10, method="inclusive")[-1] if len(self.latencies) > 1
               else latency)
        return SpeedMetrics(
            ttft_s=ttft, ttft_iqr_s=ttft_iqr, latency_s=latency, latency_p90_s=p90, latency_iqr_s=latency_iqr,
            tokens_per_s=self.new_tokens / latency,
            throughput_tokens_per_s=self.batch_size * self.new_tokens / latency,
            prefill_tokens_per_s=statistics.median(self.prefill_rates),
            decode_tokens_per_s=decode, decode_tokens_per_s_iqr=decode_iqr,
            new_tokens=self.new_tokens, timed_samples=len(self.latencies))


def median_iqr(values: List[float]) -> tuple:
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1
