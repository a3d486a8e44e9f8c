"""qsweep: which precision, runtime and device to run a language model with, measured."""

import logging

# Set before anything imports bitsandbytes: it warns once per int8 matmul when activations are not fp16 (by
# design here), and at import on CPUs with AVX512-BF16 that it could not fetch an optional kernel from the
# Hugging Face hub (package `kernels`): qsweep runs offline and measures bitsandbytes' own CPU kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
