"""Bits-per-byte: the val loss normalised by the UTF-8 bytes of the target text, counted
directly on a known text with awkward bytes (multi-byte characters split across tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model import GPT
from pipeline.tokenizer import EOT, get_tokenizer, token_byte_lengths
from pipeline.val_loss import compute_val_loss

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = ["Grüße aus Köln — naïve café, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 日本語 text.", "tabs\tand\r\nCRLF; emoji 🙂🙃 end",
        "plain ASCII words here " * 4]


def test_bpb_equals_a_direct_count_on_a_known_text():
    enc = get_tokenizer()
    stream = []
    for doc in DOCS:  # the shard layout: end-of-text before each document
        stream += [EOT] + enc.encode_ordinary(doc)
    seq_len = 16
    n_seq = (len(stream) - 1) // seq_len
    tokens = np.array(stream[:n_seq * seq_len + 1], dtype=np.uint16)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()
    result = compute_val_loss(model, tokens, seq_len, 3, torch.device("cpu"))

    # Direct: one long forward per sequence, text bytes from decoding the targets themselves.
    nats, count, all_nats, text = 0.0, 0, 0.0, b""
    with torch.no_grad():
        for i in range(n_seq):
            chunk = torch.tensor(tokens[i * seq_len:(i + 1) * seq_len + 1].astype(np.int64))
            logits = model(chunk[None, :-1])[0][0, :, :50257]
            losses = F.cross_entropy(logits, chunk[1:], reduction="none")
            for target, loss in zip(chunk[1:].tolist(), losses.tolist()):
                all_nats += loss
                count += 1
                if target != EOT:
                    nats += loss
                    text += enc.decode_single_token_bytes(target)
    kept = [t for t in tokens[1:].tolist() if t != EOT]
    assert text == enc.decode_bytes(kept)  # the byte count is the text's, split tokens included
    assert result.tokens == count == n_seq * seq_len
    assert result.loss == pytest.approx(all_nats / count, rel=1e-6)
    assert result.bpb == pytest.approx(nats / (math.log(2) * len(text)), rel=1e-6)


def test_token_byte_lengths_come_from_the_tokenizer():
    lengths = token_byte_lengths()
    enc = get_tokenizer()
    assert len(lengths) == 50257 and lengths[EOT] == 0
    assert lengths[enc.encode_ordinary(" the")[0]] == 4
    assert sum(lengths[t] for t in enc.encode_ordinary("日本語 🙂")) == len("日本語 🙂".encode())
