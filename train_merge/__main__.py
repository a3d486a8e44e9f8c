"""`python -m train_merge`: fine-tune with LoRA, merge, save, track (config: conf/train_merge.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qsweep import console
from qsweep.config import PROJECT_ROOT, ConfigError
from qsweep.quality import perplexity
from train_merge.config import register_schemas, validate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
register_schemas()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train_merge")
def main(raw: DictConfig) -> None:
    try:
        cfg = validate(raw)  # bad values fail here, before anything loads
    except ConfigError as err:
        console.refuse(str(err), prefix="train_merge")
        sys.exit(1)
    from qsweep import environment, sources, tracking
    from train_merge import merge, pipeline

    cfg.train.device = environment.resolve_device(cfg.train.device)
    try:
        environment.require_device(cfg.train.device)
        result = pipeline.run(cfg)
    except (ValueError, merge.MergeMismatch, sources.ModelUnavailable, tracking.StoreUnavailable,
            environment.DeviceUnavailable) as err:
        # the data, the base model, the store or the merge check: the run (if any) is recorded FAILED
        console.refuse(tracking.one_line(err), prefix="train_merge")
        sys.exit(1)
    lines = [f"held-out loss (perplexity): before {result.heldout_loss_before:.3f} "
             f"({perplexity(result.heldout_loss_before):.1f}), after "
             f"{result.heldout_loss_after:.3f} ({perplexity(result.heldout_loss_after):.1f}), "
             f"saved checkpoint {result.heldout_loss_merged:.3f}",
             f"merge_max_abs_diff: {result.merge_max_abs_diff:.3g}; {result.train_steps} steps, "
             f"training {result.train_time_s:.0f} s, total {result.total_time_s:.0f} s"]
    for before, after in zip(result.replies_before, result.replies_after):
        lines += ["", f"> {before['prompt']}", f"  before: {before['reply']!r}", f"  after:  {after['reply']!r}"]
    name = Path(result.output_dir).name
    default_place = Path(result.output_dir) == PROJECT_ROOT / "models" / name
    option = f"model={name}" if default_place and (Path(CONF_DIR) / "model" / f"{name}.yaml").is_file() else \
        f"model=gemma-3-270m model.name={name} model.name_or_path={result.output_dir}"
    lines += ["", f"merged checkpoint: {result.output_dir}", f"measure it: python run.py {option}"]
    console.show("\n".join(lines))


if __name__ == "__main__":
    main()
