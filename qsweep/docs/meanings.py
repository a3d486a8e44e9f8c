"""One line per metric, tag and artifact name that qsweep records: what it means. docs/metrics.md is generated
from the code's names and these lines (`python -m qsweep.docs`); a name without a line here, or a line without a
name, stops the generator and fails tests/test_docs.py. Links are relative to docs/."""

METRICS = {
    # loading (qsweep.results.LoadMetrics)
    "load_time_s": "`from_pretrained` (or the runtime's load) to a ready model on the device (a one-time conversion or download is not included)",
    "model_footprint_gb": "the size of what the runtime loaded: transformers' weights and buffers "
                          "(`get_memory_footprint`), the GGUF file, CTranslate2's model.bin",
    "conversion_time_s": "llama.cpp and CTranslate2: converting the checkpoint into the files this run loaded (once per "
                         "checkpoint and format; the `conversion` tag says whether this job did it)",
    # speed (qsweep.trackers.latency.SpeedMetrics)
    "ttft_s": "time to first token: from calling `generate` to the moment the first new token's logits exist "
              "(stamped by a logits processor), median over the timed generations",
    "ttft_iqr_s": "interquartile range of the time to first token",
    "latency_s": "end-to-end `generate` time, median over the timed generations",
    "latency_p90_s": "90th percentile of the latency",
    "latency_iqr_s": "interquartile range of the latency (the tables' `±` is half of it)",
    "tokens_per_s": "new tokens of one sequence / median latency (the T4 notebook's definition, prefill included)",
    "throughput_tokens_per_s": "batch size x new tokens / median latency: what the whole machine delivers "
                               "(= `tokens_per_s` at batch 1)",
    "prefill_tokens_per_s": "the batch's prompt tokens / time to first token, median over the timed generations",
    "decode_tokens_per_s": "per sequence: tokens after the first / time after the first token, median: the steady "
                           "decoding speed (the front's and `recommend`'s speed at batch 1)",
    "decode_tokens_per_s_iqr": "interquartile range of the decode speed",
    "new_tokens": "tokens generated per sequence (= `generation.max_new_tokens`: EOS cannot end a generation early)",
    "timed_samples": "how many timed `generate` calls the medians are over",
    "phase_warmup_s": "wall time of the untimed warm-up generations",
    "phase_generation_s": "wall time of all the timed generations",
    # memory (qsweep.trackers.memory.MemoryMetrics)
    "setting_memory_gb": "what the setting's model and runtime need to generate (weights, KV cache, work buffers at "
                         "the measured batch and lengths): the tracked region's peak above its start, RSS on the CPU, "
                         "torch's allocation (else NVML's) on CUDA; what the front and `recommend --max-memory-gb` "
                         "use ([measurement](measurement.md#which-memory-figure-means-what))",
    "harness_rss_gb": "the worker's resident memory before the model loads: Python, torch, the tokenizer and "
                      "qsweep itself, none of which a deployment of the setting needs",
    "peak_rss_gb": "peak resident memory of the job's process (harness included) over the tracked region: on Linux "
                   "the kernel's high-water mark (`VmHWM`, reset at its start); elsewhere the process's lifetime "
                   "peak (tag `memory_peak`)",
    "peak_vram_gb": "CUDA only: torch's peak allocated memory over the tracked region, read when it ends (the "
                    "quality pass after it is not in it)",
    "gpu_mem_used_gb": "CUDA only: device memory in use as NVML sees it, read at the edges of the timed generations "
                       "(includes the CUDA context and other processes)",
    # energy (qsweep.trackers.energy.EnergyMetrics)
    "energy_j": "energy of all the timed generations together (prefill and decode, every repeat): NVML on CUDA, RAPL "
                "on the CPU ([measurement](measurement.md#energy)); absent where no counter can be read",
    "energy_per_output_token_j": "`energy_j` / every output token of the timed generations (prefill energy included)",
    "energy_per_token_j": "`energy_j` / (prompt + output tokens) of the timed generations",
    "avg_power_w": "`energy_j` / the timed generations' wall time",
    "tokens_per_joule": "output tokens / `energy_j` (tokens/s per W)",
    "idle_power_w": "the device's power for 0.3 s before the job loads: subtract it from `avg_power_w` for the job's "
                    "own share",
    "power_limit_w": "CUDA only: the GPU's enforced power limit (NVML)",
    # quality (qsweep.quality.QualityMetrics); how each is computed: quality.md
    "perplexity": "of the model as loaded (quantized, on its device) on the evaluation text (`quality.text`) "
                  "([quality](quality.md#perplexity))",
    "kl_div_vs_fp32": "mean KL(P_fp32 ‖ Q_run) of the next-token distributions over the same positions, in nats; 0 "
                      "for fp32 itself (top 256 exact + the tail estimated, [quality](quality.md#how-the-kl-is-computed))",
    "kl_div_vs_fp32_se": "standard error of `kl_div_vs_fp32` by batch means over blocks of 32 positions "
                         "([quality](quality.md#standard-errors)); 0 for fp32",
    "kl_div_median_vs_fp32": "median of the per-position KL: the typical position, which a few very bad ones cannot "
                             "move",
    "kl_div_p99_vs_fp32": "99th percentile of the per-position KL: how bad the worst 1% of positions get",
    "kl_div_p999_vs_fp32": "99.9th percentile of the per-position KL: the rare positions where the run goes wrong",
    "kl_div_max_vs_fp32": "the worst position's KL",
    "top1_agreement_vs_fp32": "share of positions where the run's most likely token is fp32's; 1 for fp32",
    "top1_agreement_vs_fp32_se": "standard error of `top1_agreement_vs_fp32` (batch means, as the KL's)",
    "rms_delta_p_vs_fp32": "root mean square, over the positions, of the change in probability of fp32's most likely "
                           "token (0.01 is llama.cpp's \"RMS Δp 1%\"); 0 for fp32",
    "ln_ppl_ratio_vs_fp32": "ln(perplexity / fp32's perplexity) on the same positions: above 0 the run predicts the "
                            "text worse than fp32; 0 for fp32",
    "ln_ppl_ratio_vs_fp32_se": "standard error of `ln_ppl_ratio_vs_fp32`, of the paired per-position NLL "
                               "difference (batch means)",
    "output_match_vs_fp32": "per prompt, the share of fp32's greedy tokens the run reproduces before the first "
                            "difference; mean over prompts",
    "degenerate_output": "1 when the output is broken (the `degenerate_reason` tag says how: "
                         "[quality](quality.md#broken-output))",
    "degenerate_vs_fp32": "1 when the setting broke the output where fp32's is not broken: such a run is never on the "
                          "front nor recommended",
    "quality_time_s": "time spent on the quality metrics, including a one-time fp32 reference build by this run",
    # where a job's time went (qsweep.results.JobPhases)
    "job_wall_s": "the whole job, from its start to its run's last write (the phases below, `load_time_s`, "
                  "`quality_time_s` and the rest: Hydra and config checks in between)",
    "phase_worker_start_s": "starting worker processes and handing the work and the answer across (the sweep's first "
                            "job also waits for the fork server's imports)",
    "phase_imports_s": "a new warm worker's imports and CUDA initialisation (on a GPU: bitsandbytes, transformers' "
                       "modeling code, the CUDA context); 0 once the worker is warm",
    "phase_prepare_s": "checkpoint preparation: random weights made, a conversion, or finding them made (~0)",
    "phase_environment_s": "the environment record (`environment.json`; once per worker, ~0 after)",
    "phase_recording_s": "MLflow: the run, its params, datasets and artifacts (the final batch of metrics and tags, "
                         "written after the clock stops, is not in it)",
    "fixed_cost_s": "`job_wall_s` minus (`load_time_s` + `phase_warmup_s` + `phase_generation_s` + "
                    "`quality_time_s`): what a job costs besides measuring; the sweep's summary ends with the share of "
                    "its wall time spent in timed generation and the median fixed cost per job",
}

TRAIN_METRICS = {  # a fine-tune run (train_merge/pipeline.py), experiment train_merge
    "train_examples": "exchanges in the training split",
    "heldout_examples": "exchanges in the held-out split",
    "heldout_tokens": "reply tokens of the held-out split (what the held-out loss is averaged over)",
    "heldout_loss_before": "mean loss per held-out reply token of the base model",
    "heldout_perplexity_before": "exp(`heldout_loss_before`)",
    "trainable_params": "parameters the LoRA adapter trains",
    "train_loss": "training loss per step (a series over the steps)",
    "lr": "learning rate per step (a series over the steps)",
    "heldout_loss_after": "held-out loss of the adapter model",
    "heldout_perplexity_after": "exp(`heldout_loss_after`)",
    "train_time_s": "wall time of the training steps",
    "train_steps": "optimizer steps taken",
    "merge_max_abs_diff": "largest difference between the merged model's and the adapter model's logits (the run "
                          "fails above `merge.max_abs_diff`)",
    "merge_max_abs_logit": "largest logit compared: the scale of `merge_max_abs_diff`",
    "heldout_loss_merged": "held-out loss of the saved checkpoint as the sweep loads it (also its logged model's)",
    "heldout_perplexity_merged": "exp(`heldout_loss_merged`)",
    "train_loss_first": "loss of the first training step",
    "train_loss_last": "loss of the last training step",
    "total_time_s": "the whole `python -m train_merge`",
}

TAGS = {
    "config_hash": "the run's identity: a hash of what is measured (not where it is recorded)",
    "error": "why the run FAILED or was KILLED, one line (`out_of_memory: ...`, `WorkerDied: ...`, `orphaned: ...`)",
    "qsweep.kind": "`job`, `sweep` or `train_merge`",
    "qsweep.owner": "host, pid namespace, pid and start time of the process that must end the run",
    "qsweep.skipped.": "on a sweep run, `qsweep.skipped.<config_hash>`: the earlier run a skipped job stands for",
    "weights_sha256": "local checkpoint folders and GGUF files: what they held when measured (for a GGUF, the "
                      "start of its `sha256sum`)",
    "weights_quantized_from": "weights dequantized from a quantized file (the bundled Gemma: Q4_K_M; a GGUF model of a "
                              "quantized type): its type; settings of its family are marked in the report and "
                              "`recommend` ([quality](quality.md#weights-that-were-quantized-before-qsweep-got-them))",
    "reproduces": "on a reproduction: the run it measured again",
    "sweep_overrides": "on a sweep run: its command-line overrides",
    "skipped_jobs": "on a sweep run: how many jobs `sweep.skip_completed=true` skipped",
    "mlflow.note.content": "the run's description in the UI (Markdown)",
    "fine_tune_run": "a run of a fine-tuned checkpoint: the fine-tune run that made it",
    "logged_model_id": "the MLflow logged model of the fine-tuned checkpoint",
    "model_version": "its registered model version, `<name>/<version>`",
    "artifact": "the file or folder the runtime loaded (the GGUF, the CTranslate2 folder, the checkpoint): what "
                "`qsweep export` and `recommend --register` hand over ([deciding](deciding.md#handing-over-the-pick))",
    "artifact_stamp": "the artifact's bytes and newest modification time when it was measured (a changed artifact "
                      "is refused)",
    "artifact_tokenizer": "the folder of the tokenizer the artifact was run with (\"\" for none)",
    "artifact_sha256": "on a model version `recommend --register` made: the SHA-256 of the GGUF, or of every file "
                       "of the folder in name order",
    "run_id": "on a model version `recommend --register` made: the job run that measured it",
    "sweep": "on a model version `recommend --register` made: the runs it was chosen among (`sweep <name>` or "
             "`experiment <name>`)",
    "objective": "on a model version `recommend --register` made: `speed`, `quality` or `memory`",
    "constraints": "on a model version `recommend --register` made: the caps it met",
    "model": "`model.name`",
    "precision": "fp32, fp16, bf16, int8 or int4",
    "quant_type": "int4 only: nf4 or fp4",
    "compile": "`true` when `generation.compile=true`",
    "device": "cpu or cuda (`device=auto` resolved)",
    "backend": "transformers, llama-cpp or ctranslate2",
    "runtime": "the runtime and its weight format, e.g. `llama.cpp Q4_K_M`",
    "weights": "`pretrained` or `random`",
    "max_new_tokens": "new tokens per sequence",
    "batch_size": "sequences generated together",
    "prompt_tokens": "the prompts' length in tokens, or `text` for the text prompts",
    "setting": "the label in the UI and the tables, e.g. `CPU INT4`",
    "precision_check": "what the check after loading found (dtypes, quantized layers, GGUF tensor types)",
    "conversion": "`made` or `reused`: the backend's files from the checkpoint",
    "quality": "`measured`, or `not_applicable` (random weights)",
    "degenerate_reason": "`none`, or why the output is broken: `non_finite_logits`, `empty_output`, "
                         "`repetition_loop`, `sentence_loop`",
    "quality_reference": "the fp32 reference: `self` (an fp32 job), `reused` or `built` by this job",
    "memory_peak": "where the kernel's peak RSS cannot be reset: `since the worker started`, so `peak_rss_gb` and "
                   "`setting_memory_gb` may hold what the process peaked at before the job",
    "runtime_tokenizer": "llama.cpp: whether the GGUF's own tokenizer splits the evaluation text (`quality.text`) and "
                         "the prompts as the checkpoint's does (`same`) or not (`differs: ...`); every runtime is fed "
                         "the checkpoint's ids ([models](models.md#same-reference-same-tokens))",
    "quality_unavailable": "why a model has no fp32 reference (a GGUF whose architecture transformers cannot read)",
    "quality_text": "the text scored: `builtin`, `wikitext-2` or the file's path (`quality.text`)",
    "quality_text_sha256": "the SHA-256 of the scored text's content",
    "quality_scores": "`measured` by this job, or `reused` from an earlier job of the same setting",
    "base_checkpoint": "a fine-tune run: the base checkpoint folder",
    "base_model": "a fine-tune's logged model: the base model id",
    "data_file": "a fine-tune run: its dialogue file",
    "data_sha256": "a fine-tune run: the first 12 hex digits of that file's SHA-256",
    "adapter": "a fine-tune run: the saved LoRA adapter folder",
    "checkpoint": "a fine-tune run and its logged model: the merged checkpoint folder",
    "quantization": "a fine-tune run: `none`, or `int4` (QLoRA)",
    "energy_source": "the energy counter used: `nvml`, or `rapl` and its domains",
    "energy_unavailable": "why the run has no energy metric, one line",
    "qsweep.emulated": "why this setting is only emulated on this CPU; absent when native or unknown",
}

ARTIFACTS = {
    "config.yaml": "the resolved config (what `qsweep reproduce` runs again)",
    "environment.json": "packages, CPU, GPU, driver and CUDA versions, git commit",
    "generations.json": "per prompt: the prompt, the output, their token ids, and fp32's output",
    "generations.md": "each output above fp32's for the same prompt",
    "generations_table.json": "an MLflow table of the outputs, for the UI's Artifact evaluation view",
    "precision_check.json": "what the check after loading found, in full",
    "quality.json": "the quality details: positions, windows, the longest repeated n-gram of every output",
    "traceback.txt": "a FAILED run's traceback",
    "skipped_jobs.json": "on a sweep run: the skipped jobs and the runs they stand for",
}
