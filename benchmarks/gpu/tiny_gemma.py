"""A tiny Gemma 3 (2 layers, hidden 64, random weights) with a character-level tokenizer: the stand-in that
runs the CUDA code paths of the gemma and finetune parts when gemma-3-270m is not on the device machine (it
cannot travel there: docs/gpu/README.md). The tests fine-tune and sweep the same model. Its vocabulary is
every character of the fine-tuning data, the quality evaluation text and the restaurant prompts.

    python benchmarks/gpu/tiny_gemma.py FOLDER
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ("train_merge/data/restaurant_dialogues.jsonl", "qsweep/data/eval_text.txt", "conf/generation/restaurant.yaml")


def make_tiny_gemma(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    text = "".join((ROOT / path).read_text() for path in TEXTS)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(text)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    config = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                              max_position_embeddings=1024, sliding_window=64, pad_token_id=0, eos_token_id=1,
                              bos_token_id=2, initializer_range=0.2)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(make_tiny_gemma(Path(sys.argv[1])))
