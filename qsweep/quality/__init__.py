"""Output quality, measured in the same run as speed: perplexity on a fixed text, divergence from the
fp32 model of the same checkpoint, agreement of greedy outputs, and a check for broken output.

Runs after the timed generation, outside every timed and memory-tracked region. Everything is
deterministic: a fixed text, fixed windows, greedy outputs.

The fp32 reference is made once per (checkpoint, evaluation windows, device) and stored under
<cache_dir>/references/: for every scored position the top-k log-probabilities of the fp32 model,
their token ids, and the log of the probability left outside the top k. Greedy outputs of the fp32
model are stored separately, per (checkpoint, prompts, max_new_tokens, device). An fp32 job writes
both from its own work; any other job finds them, or builds them once (loading the checkpoint in
fp32 on its device) under a file lock.

KL divergence from the stored reference: KL(P_fp32 || Q_run) splits (chain rule) into the KL between the
two distributions coarsened to the reference's top-k tokens plus one bucket "every other token" (exact,
and by the log-sum inequality a lower bound), plus P_rest times the KL between the two distributions
within the rest. The reference stores tokens drawn from its rest in proportion to their probability, so
that second term is estimated without bias by their mean log-ratio. Why: a 262k-token vocabulary's tail
carries a sizeable share of the KL (top-64 + one bucket read 0.82 of the full KL on Gemma 3), and the full
distributions (1 MB per position) are too large to store.

The modules, each importing only those before it (and the layers below quality: backends, measure):
    text        the evaluation text (quality.text, read by qsweep.textsource) and its windows
    scoring     a model's scores on the windows: perplexity, KL and top-1 agreement against a reference
    outputs     greedy outputs: agreement with fp32's, and the broken-output check
    cache       the references and a setting's scores on disk (keys, formats, atomic writes)
    reference   building the fp32 reference: load the checkpoint as transformers fp32, score, generate
    evaluation  one job's quality: find or build the references, score, judge the outputs
"""

from qsweep.quality.evaluation import NOT_APPLICABLE, QualityMetrics, QualityResult, applicable, evaluate
from qsweep.quality.outputs import matching_tokens
from qsweep.quality.scoring import perplexity
from qsweep.quality.text import eval_text, eval_text_file, eval_windows, starts_with_bos, windows_for

__all__ = ["NOT_APPLICABLE", "QualityMetrics", "QualityResult", "applicable", "evaluate", "matching_tokens",
           "perplexity", "eval_text", "eval_text_file", "eval_windows", "starts_with_bos", "windows_for"]
