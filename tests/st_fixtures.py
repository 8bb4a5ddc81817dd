"""A tiny random SentenceTransformer built offline (a 1-layer BERT with a word-piece vocab of a few
dozen words), saved with `SentenceTransformer.save` to a folder, and the same laid out as a Hugging
Face cache entry: the real sentence-transformers loading path, without a download."""

from __future__ import annotations

from pathlib import Path

WORDS = ("rain", "on", "a", "the", "roof", "heavy", "tin", "jazz", "sax", "##ophone", "solo", "thunder", "storm",
         "wind", "forest", "birds", "drum", "loop", "deep", "bass", "piano", "soft")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_tiny_st(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random SentenceTransformer (mean pooling, normalised, 16 dims) in `folder`."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers import models as st_models  # type: ignore[no-redef,attr-defined]
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    torch.manual_seed(seed)
    bert = folder / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    vocab = bert / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    transformer = st_models.Transformer(str(bert))
    model = SentenceTransformer(modules=[transformer, st_models.Pooling(16, "mean"), st_models.Normalize()],
                                device="cpu")
    out = folder / "st"
    model.save(str(out))
    return out


def as_hf_cache(model_dir: Path, hub: Path, repo: str) -> Path:
    """Lay `model_dir` out as `repo` in a Hugging Face hub cache at `hub` (refs/main -> a snapshot)."""
    entry = hub / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(COMMIT)
    for f in model_dir.rglob("*"):
        if f.is_file():
            dst = snapshot / f.relative_to(model_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    return snapshot
