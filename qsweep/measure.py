"""The measurement contract every backend follows: warm-up, timed repeats, time to first token; the
trackers (qsweep/trackers/) watch the timed generations through the `timed` region.

Every setting does the same work: greedy, exactly max_new_tokens new tokens per sequence (EOS cannot
end a generation early), generation.batch_size sequences at once. CUDA is synchronized around every
timed region and at the first-token stamp; the CPU uses perf_counter.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, List, Optional

import torch

from qsweep.backends import Runtime
from qsweep.config import GenerationConfig
from qsweep.trackers import Work, untracked
from qsweep.trackers.latency import LatencyTracker, SpeedMetrics, median_iqr


class PromptTooLong(ValueError):
    pass


@dataclass
class Generation:
    prompt_ids: List[int]
    output_ids: List[int]  # new tokens only


def check_context(prompt_ids: List[List[int]], max_new_tokens: int, limit: Optional[int]) -> None:
    longest = max(map(len, prompt_ids))
    if limit and longest + max_new_tokens > limit:
        room = limit - longest
        raise PromptTooLong(
            f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {limit} tokens: "
            + (f"lower generation.max_new_tokens to {room} or shorten the prompt" if room > 0 else
               f"the prompt alone fills it; shorten it (generation.prompt_tokens below {limit})"))


def _progress(total: int):
    """A progress bar over the timed generations, on a terminal only (logs and pipes get nothing)."""
    import sys

    if total < 2 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread beside the timed generations
    return tqdm(total=total, desc="qsweep: timed generations", unit="gen", leave=False)


def batches(prompt_ids: List[List[int]], size: int) -> List[List[List[int]]]:
    """One batch per prompt: that prompt first, then the next ones, cycled to fill `size` sequences."""
    return [[prompt_ids[(i + k) % len(prompt_ids)] for k in range(size)] for i in range(len(prompt_ids))]


def _spread_too_wide(per_batch: List[List[float]], gen: GenerationConfig, timed_s: float) -> bool:
    """generation.repeat_until_spread: another round while some batch's own latencies (its prompt length's)
    have an IQR / median above it, or fewer than MIN_SAMPLES, until generation.repeat_time_cap_s of timed
    generation has passed. Batches of different prompt lengths are judged apart: their latencies differ by
    the length, a spread more rounds would never shrink."""
    if gen.repeat_until_spread is None or timed_s >= gen.repeat_time_cap_s:
        return False
    for latencies in per_batch:
        median, iqr = median_iqr(latencies)
        if len(latencies) < MIN_SAMPLES or iqr / median > gen.repeat_until_spread:
            return True
    return False


MIN_SAMPLES = 3  # a batch's latencies before its spread is judged (its median and quartiles differ from then)


class WrongLength(RuntimeError):
    """A runtime did not generate exactly max_new_tokens tokens for every sequence."""


def generate_timed(runtime: Runtime, prompt_ids: List[List[int]], gen: GenerationConfig, device: str,
                   timed: Callable[[], ContextManager[Work]] = untracked) -> tuple[SpeedMetrics, List[Generation]]:
    """Warm-up, then `repeats` rounds of one timed generate per batch; a prompt's Generation is the
    first sequence of its batch. `timed` (a job's Trackers.timed) is entered around all the timed
    generations, between synchronisations, and counts their tokens."""
    cuda = device == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(batch):
        first = []
        start = now()
        new = runtime.generate(batch, gen.max_new_tokens, lambda: first.append(now()))
        end = now()
        if len(new) != len(batch) or any(len(seq) != gen.max_new_tokens for seq in new):
            raise WrongLength(f"asked for {len(batch)} x {gen.max_new_tokens} new tokens, got "
                              f"{[len(seq) for seq in new]}")
        return new, end - start, first[0] - start

    work = batches(prompt_ids, gen.batch_size)
    started = time.perf_counter()
    # Every batch (every prompt length) is warmed up: compiled graphs, a runtime's context or work buffers
    # for a new shape, and the allocator's first use of a size are made here, not in a timed call.
    for _ in range(gen.warmup):
        for batch in work:
            run(batch)
    warmed = time.perf_counter()
    latency, outputs = LatencyTracker(gen.max_new_tokens, gen.batch_size), {}
    per_batch: List[List[float]] = [[] for _ in work]
    progress = _progress(gen.repeats * len(work))
    rounds = 0
    with timed() as counted:
        while rounds < gen.repeats or _spread_too_wide(per_batch, gen, time.perf_counter() - warmed):
            rounds += 1
            for i, batch in enumerate(work):
                new, seconds, ttft = run(batch)
                if progress is not None:  # outside the timed region
                    progress.update()
                per_batch[i].append(seconds)
                latency.add(sum(map(len, batch)), seconds, ttft)
                counted.count(sum(map(len, batch)), len(batch) * gen.max_new_tokens)
                outputs[i] = Generation(list(batch[0]), list(new[0]))
    finished = time.perf_counter()
    if progress is not None:
        progress.close()
    speed = dataclasses.replace(latency.result(), phase_warmup_s=warmed - started,
                                phase_generation_s=finished - warmed)
    return speed, [outputs[i] for i in range(len(prompt_ids))]
