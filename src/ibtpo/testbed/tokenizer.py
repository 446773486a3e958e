"""A character-level tokenizer built offline with `tokenizers`, wrapped as a transformers fast tokenizer.

One token per character (a BPE model with no merges), so "\\n\\n" is two tokens and step boundaries are exact on
token ids. Special tokens: <pad>, <eos>, <bos>, <unk>. Saved beside the model with ``save_pretrained``.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the testbed tokenizer: 4 special tokens and one token per printable ASCII character and newline."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    core = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
    )
