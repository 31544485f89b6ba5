"""Text/image encoders, tokenizer, diffusion prior: shapes, round trips and the training recipes."""
from __future__ import annotations

import argparse

import pytest
import torch

from mav_core.io.checkpoints import save_model
from mav_core.io.loader import load_model
from mav_core.diffusion import Denoiser
from mav_core.inference import SamplingOptions
from mav_core.inference.text import prompt_warnings, sample_image_embed
from mav_core.models import family
from mav_core.models.prior import DiffusionPrior, PriorConfig
from mav_core.models.text import BOS, EOS, PAD, UNK, TextImageConfig, TextImageEncoder, Tokenizer
from mav_core.train import prior as prior_stage
from mav_core.train import text as text_stage

VOCAB = ["a", "red", "blue", "circle", "square", "on", "background"]


def tiny_encoder(seed=0, **kw) -> TextImageEncoder:
    torch.manual_seed(seed)
    cfg = dict(vocab=VOCAB, max_tokens=8, width=32, layers=1, heads=2, embed_dim=16, image_size=16,
               image_channels=(8, 16))
    cfg.update(kw)
    return TextImageEncoder(TextImageConfig(**cfg)).eval()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_unknown_words_become_unk_and_case_punctuation_are_ignored():
    tok = Tokenizer(VOCAB, max_tokens=8)
    ids = tok("A RED, zebra-circle!")[0].tolist()
    words = [tok.words[i] for i in ids]
    assert words[:6] == ["<bos>", "a", "red", "<unk>", "circle", "<eos>"]
    assert ids[6:] == [PAD, PAD]
    assert tok("a red circle")[0].tolist()[:5] == tok("a  Red circle.")[0].tolist()[:5]
    assert UNK in tok("xylophone")[0].tolist()


def test_tokenizer_empty_prompt_and_truncation():
    tok = Tokenizer(VOCAB, max_tokens=6)
    assert tok("")[0].tolist() == [BOS, EOS, PAD, PAD, PAD, PAD]
    long = tok("a red blue circle square on background a red")[0].tolist()
    assert len(long) == 6 and long[0] == BOS and long[-1] == EOS and PAD not in long
    assert tok(["a", "red", ""]).shape == (3, 6)
    with pytest.raises(TypeError, match="prompt must be a str"):
        tok([3])


def test_config_rejects_bad_vocab_and_unknown_keys():
    with pytest.raises(ValueError, match="vocab"):
        TextImageConfig(vocab=["two words"])
    with pytest.raises(ValueError, match="unknown TextImageConfig keys"):
        TextImageConfig.from_dict({"vocab": VOCAB, "colour": 1})


# --------------------------------------------------------------------------- encoder


def test_encoder_shapes_and_unit_norm_at_any_image_size():
    enc = tiny_encoder()
    tokens, pooled = enc.encode_text(["a red circle", "", "zebra " * 20])
    assert tokens.shape == (3, 8, 32) and pooled.shape == (3, 16)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.isfinite(tokens).all()
    for size in (16, 40):
        img = enc.encode_image(torch.rand(2, 3, size, size) * 2 - 1)
        assert img.shape == (2, 16)
        assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        enc.encode_image(torch.zeros(2, 1, 16, 16))


def test_padding_does_not_change_text_features_of_real_tokens():
    """The same prompt at two fixed lengths gives the same pooled embedding (padding is masked)."""
    a, b = tiny_encoder(max_tokens=8), tiny_encoder(max_tokens=12)
    sd = a.state_dict()
    sd_b = b.state_dict()
    sd["position_embedding"] = torch.cat([sd["position_embedding"], sd_b["position_embedding"][8:]])
    b.load_state_dict(sd)
    assert torch.allclose(a.encode_text(["a red circle"])[1], b.encode_text(["a red circle"])[1], atol=1e-5)


def test_text_image_encoder_save_load_round_trip(tmp_path):
    enc = tiny_encoder(seed=3)
    path = tmp_path / "text.safetensors"
    save_model(path, enc, "text")
    loaded = load_model(path, expect_stage="text")
    assert loaded.module.config == enc.config
    prompts = ["a blue square on a red background", "", "unknown words"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        for got, want in zip(loaded.module.encode_text(prompts), enc.encode_text(prompts)):
            assert torch.equal(got, want)
        assert torch.equal(loaded.module.encode_image(images), enc.encode_image(images))


# --------------------------------------------------------------------------- prior


def tiny_prior(seed=0) -> DiffusionPrior:
    torch.manual_seed(seed)
    return DiffusionPrior(PriorConfig(embed_dim=16, text_width=32, width=32, layers=1, heads=2, max_tokens=8)).eval()


def test_prior_forward_through_denoiser_and_sampling_gives_unit_embeddings():
    enc, prior = tiny_encoder(), tiny_prior()
    tokens, pooled = enc.encode_text(["a red circle", "a blue square"])
    schedule = prior.config.noise_schedule()
    den = Denoiser(prior, schedule, "x0")
    out = den(torch.randn(2, 16), torch.tensor([1.0, 5.0]), text_tokens=tokens, text_embed=pooled)
    assert out.shape == (2, 16)
    with torch.no_grad():
        prior.set_null_conditioning(*enc.encode_text([""]))
    a = sample_image_embed(prior, schedule, tokens, pooled, SamplingOptions(seed=7, steps=4, cfg=3.0))
    b = sample_image_embed(prior, schedule, tokens, pooled, SamplingOptions(seed=7, steps=4, cfg=3.0))
    c = sample_image_embed(prior, schedule, tokens, pooled, SamplingOptions(seed=7, steps=4, cfg=1.0))
    assert a.shape == (2, 16) and torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="text_tokens must be"):
        prior(torch.randn(2, 16), torch.zeros(2), tokens[:, :4], pooled)


def test_prior_save_load_round_trip_keeps_null_conditioning(tmp_path):
    enc, prior = tiny_encoder(), tiny_prior(seed=5)
    with torch.no_grad():
        prior.set_null_conditioning(*enc.encode_text([""]))
    path = tmp_path / "prior.safetensors"
    schedule = prior.config.noise_schedule()
    save_model(path, prior, "prior", schedule=schedule, prediction="x0")
    loaded = load_model(path, expect_stage="prior")
    assert loaded.schedule == schedule and loaded.prediction == "x0"
    assert torch.equal(loaded.module.null_text_embed, prior.null_text_embed)
    tokens, pooled = enc.encode_text(["a red circle"])
    options = SamplingOptions(seed=1, steps=3, cfg=2.0)
    assert torch.equal(sample_image_embed(loaded.module, loaded.schedule, tokens, pooled, options),
                       sample_image_embed(prior, schedule, tokens, pooled, options))


# --------------------------------------------------------------------------- training recipes


def test_caption_augmentation_keeps_positives_consistent():
    gen = torch.Generator().manual_seed(0)
    images, scenes = text_stage.captioned_batch(64, 16, gen)
    recoloured_images, recoloured = text_stage.recolour(images, 0.5, gen)
    captions, kept = text_stage.draw_captions(scenes, 0.5, gen, recoloured)
    positives = text_stage.matches(scenes, kept, recoloured)
    assert positives.diagonal().all(), "every image must fit its own caption"
    assert any(recoloured) and not all(recoloured)
    for i, (scene, caption, changed) in enumerate(zip(scenes, captions, recoloured)):
        if changed:
            assert scene.colour not in caption.split(), caption
            assert not torch.equal(recoloured_images[i], images[i]) or scene.colour == "white"
        else:
            assert torch.equal(recoloured_images[i], images[i])
        for j, other in enumerate(scenes):  # a caption naming a colour never fits a recoloured image
            if changed and "colour" in kept[j] and i != j:
                assert not positives[i, j]
            if not changed and not recoloured[j]:
                named = [a for a in text_stage.ATTRIBUTES if a in kept[j]]
                assert bool(positives[i, j]) == all(getattr(scene, a) == getattr(other, a) for a in named)


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _falls(history, n=5):
    first, last = sum(history[:n]) / n, sum(history[-n:]) / n
    return first, last


def test_text_and_prior_stages_train_and_losses_fall(tmp_path):
    torch.set_num_threads(1)
    out = str(tmp_path / "run")
    common = ["--out", out, "--seed", "0", "--no-resume", "--save-every", "1000"]
    text_args = _args(text_stage, ["--steps", "80", "--batch-size", "48", "--lr", "3e-3", "--image-size", "16",
                                   "--width", "32", "--layers", "1", "--embed-dim", "16", "--image-channels", "8,16",
                                   "--partial-prob", "0", "--recolour-prob", "0", *common])
    text_path = text_stage.run(text_args)
    assert text_path.name == "text.safetensors" and text_path.is_file()
    encoder = load_model(text_path, expect_stage="text").module
    first, last = _falls(_history(out, "text"))
    assert last < first * 0.9, f"text loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"

    prior_args = _args(prior_stage, ["--steps", "30", "--batch-size", "64", "--lr", "2e-3", "--width", "32",
                                     "--layers", "1", "--heads", "2", "--pool", "256", *common])
    prior_path = prior_stage.run(prior_args)
    loaded = load_model(prior_path, expect_stage="prior")
    assert loaded.prediction == "x0" and loaded.schedule is not None
    first, last = _falls(_history(out, "prior"))
    assert last < first * 0.9, f"prior loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
    tokens, pooled = encoder.encode_text(["a small red circle on a gray background"])
    assert sample_image_embed(loaded.module, loaded.schedule, tokens, pooled, SamplingOptions(steps=3)).shape == (1, 16)


def _history(out, stage):
    return torch.load(f"{out}/{stage}.state.pt", weights_only=True)["history"]


def test_prompt_warnings_name_unknown_words_cut_words_and_unseen_backgrounds(pack, caplog):
    """The shipped text encoder: a prompt it fully knows gives no warning; unknown words are named with the
    vocabulary, words past the token limit are counted, a background colour the world never had is named; the
    Text Encode node logs the same warnings."""
    text = load_model(family.WEIGHTS_DIR / family.STAGE_FILES["text"], expect_stage="text")
    assert prompt_warnings(text, "a large red circle on a dark blue background") == []
    unknown = prompt_warnings(text, "A small Dragon flying over the purple castle")
    assert len(unknown) == 1 and "does not know" in unknown[0]
    assert unknown[0].split(":")[1].split(";")[0].strip() == "dragon, flying, over, the, castle"
    assert "it knows: " + ", ".join(text.config.vocab) in unknown[0]
    background = prompt_warnings(text, "a small yellow triangle on a purple background")
    assert background == ["the family never saw a purple background; it renders one of black, gray, dark blue"]
    long = prompt_warnings(text, " ".join(["red"] * (text.config.max_tokens + 3)))
    assert long == [f"only the first {text.config.max_tokens - 2} words are read ({text.config.max_tokens + 3} given)"]
    with caplog.at_level("WARNING"):
        pack.text_encode.TextEncode().encode(text, "a yellow triangle on a purple background")
    assert "text: the family never saw a purple background" in caplog.text
