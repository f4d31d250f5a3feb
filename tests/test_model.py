"""The LSTM language model: shapes, O(1) stepping, sampling, log-probs, checkpoints and their errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.model import (
    LSTMLM,
    LMConfig,
    completion_logprobs,
    generate,
    pack_completions,
    sample_logits,
    widened,
    with_gated_tilt,
)
from textgym.tokenizer import get_tokenizer


@pytest.fixture
def model() -> LSTMLM:
    torch.manual_seed(0)
    return LSTMLM(LMConfig(vocab_size=2000, embed_dim=16, hidden_dim=32, num_layers=2, value_head=True)).eval()


def test_forward_shapes_and_state_carry(model):
    tokens = torch.randint(0, 2000, (3, 10))
    logits, (h, c) = model(tokens)
    assert logits.shape == (3, 10, 2000) and h.shape == c.shape == (2, 3, 32)
    # Running in two halves with the state carried equals one pass.
    a, s = model(tokens[:, :6])
    b, _ = model(tokens[:, 6:], s)
    assert torch.allclose(torch.cat([a, b], 1), logits, atol=1e-5)


@pytest.mark.parametrize("batch", [2, 40])  # both step paths: lstm_cell (small batch) and nn.LSTM
def test_step_equals_forward(model, batch):
    tokens = torch.randint(0, 2000, (batch, 5))
    full, _ = model(tokens)
    _, state = model(tokens[:, :4])
    last, _ = model.step(tokens[:, 4], state)
    assert torch.allclose(last, full[:, 4], atol=1e-5)


def test_prefill_is_exact_for_ragged_and_repeated_prompts(model):
    prompts = [[1, 5, 6, 7], [1, 9], [1, 5, 6, 7]]  # a repeated prompt runs once and its rows share the result
    logits, (h, c), last = model.prefill(prompts)
    assert logits.shape == (3, 2000) and h.shape == c.shape == (2, 3, 32) and last.shape == (3, 32)
    for i, p in enumerate(prompts):
        alone, (h_alone, c_alone) = model(torch.tensor([p]))
        assert torch.allclose(logits[i], alone[0, -1], atol=1e-5)
        assert torch.allclose(h[:, i], h_alone[:, 0], atol=1e-6) and torch.allclose(c[:, i], c_alone[:, 0], atol=1e-6)


def test_sampling_is_deterministic_for_a_seed_and_respects_top_k_top_p(model):
    prompts = [[1, 5, 6], [1, 7]]
    a = generate(model, prompts, 8, eos_id=2, generator=torch.Generator().manual_seed(3))
    b = generate(model, prompts, 8, eos_id=2, generator=torch.Generator().manual_seed(3))
    c = generate(model, prompts, 8, eos_id=2, generator=torch.Generator().manual_seed(4))
    assert a == b and a != c
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, g, top_k=2).tolist()) == {2, 3}
    assert set(sample_logits(logits, g, top_p=0.5).tolist()) == {2}
    assert sample_logits(logits, g, temperature=0).tolist() == [2] * 500
    freq = torch.bincount(sample_logits(logits, g), minlength=4).float() / 500
    assert torch.allclose(freq, torch.softmax(logits[0], 0), atol=0.06)


def test_completion_logprobs_match_forward_on_completion_tokens_only(model):
    # rows 0 and 2 share a prompt (run once); row 1's prompt is shorter and its completion one token
    prompts, completions = [[1, 5, 6], [1, 7], [1, 5, 6]], [[8, 9, 2], [10], [11, 12]]
    batch = pack_completions(prompts, completions, pad_id=0, device=None)
    assert batch.tokens.tolist() == [[8, 9, 2], [10, 0, 0], [11, 12, 0]]
    assert batch.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    lp, ent, values = completion_logprobs(model, batch, with_values=True, with_entropy=True)
    for i, (p, c) in enumerate(zip(prompts, completions)):  # each row alone, through the whole sequence
        seq = torch.tensor([p + c])
        logits, _ = model(seq[:, :-1])
        full = torch.log_softmax(logits, -1).gather(-1, seq[:, 1:, None]).squeeze(-1)[0, len(p) - 1 :]
        assert torch.allclose(lp[i, : len(c)], full, atol=1e-5)
    mask = batch.mask.bool()
    assert (lp[~mask] == 0).all() and (ent[mask] > 0).all() and (ent[~mask] == 0).all() and values.shape == (3, 3)
    with pytest.raises(ValueError, match="every completion needs at least one token"):
        pack_completions([[1]], [[]], pad_id=0, device=None)


def test_a_widened_model_computes_the_same_and_can_learn_with_its_new_units(model):
    wide = widened(model, 48, torch.Generator().manual_seed(0))
    assert wide.config.hidden_dim == 48 and wide.config.num_layers == 2 and wide.value is not None
    tokens = torch.randint(0, 2000, (3, 10))
    (a, _), (b, (h, _)) = model(tokens), wide(tokens)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(model.value(model.hidden(tokens)[0]), wide.value(wide.hidden(tokens)[0]), atol=1e-5)
    assert h[:, :, 32:].abs().mean() > 1e-2  # the new units carry a signal, in both layers
    # so the output layer's weights on them get a gradient, where they are 0
    wide(tokens)[0].logsumexp(-1).sum().backward()
    assert wide.head.weight.grad[:, 32:].abs().max() > 0
    # the same generator seed gives the same model; a narrower width is refused
    again = widened(model, 48, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(wide.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="hidden_dim 16 is narrower than the model's 32: it can only be widened"):
        widened(model, 16, torch.Generator())


def test_a_gated_tilt_starts_as_the_same_model_and_its_gate_learns_once_the_tilt_moves(model, tmp_path):
    tokens = torch.randint(0, 2000, (3, 10))
    before, plain_flops = model(tokens)[0], model.config.flops_per_token()
    gated = with_gated_tilt(model)
    assert gated is model and model.config.gated_tilt
    assert model.config.flops_per_token() == plain_flops + 2 * 32 + 2 * 2000  # the gate, and the tilt's column
    assert torch.equal(model(tokens)[0], before)  # u = 0 and gate = 0: the same logits
    # the gate's gradient is 0 while the tilt is 0 (a product); the tilt's is not
    model(tokens)[0].log_softmax(-1)[..., 7].sum().backward()
    assert model.head.tilt.grad[7] > 0 and model.head.gate.weight.grad.abs().max() == 0
    with torch.no_grad():
        model.head.tilt[7] = 0.1
    model.zero_grad()
    model(tokens)[0].log_softmax(-1)[..., 7].sum().backward()
    assert model.head.gate.weight.grad.abs().max() > 0
    # the tilt and the gate go through checkpoints and widening
    with torch.no_grad():
        model.head.gate.weight.normal_(0, 0.01)
    logits = model(tokens)[0]
    path = save_checkpoint(tmp_path / "ck", model, get_tokenizer())
    loaded = load_checkpoint(path)[0]
    assert loaded.config.gated_tilt and torch.equal(loaded(tokens)[0], logits)
    wide = widened(model, 48, torch.Generator().manual_seed(0))
    assert wide.config.gated_tilt and torch.allclose(wide(tokens)[0], logits, atol=1e-5)


def test_config_takes_numpy_integers():
    """LMConfig(vocab_size=env.action_space.n): n is a NumPy integer; the config stays JSON-serialisable."""
    import gymnasium as gym
    import numpy as np

    import textgym  # noqa: F401

    env = gym.make("textgym/TextGen-v0", reward="length")
    cfg = LMConfig(vocab_size=env.action_space.n, hidden_dim=np.int32(16))
    assert cfg.vocab_size == 2000 and type(cfg.vocab_size) is int and type(cfg.hidden_dim) is int
    json.dumps(cfg.to_dict())


def test_bad_sizes_are_named():
    for kwargs, msg in [
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer, got 0"),
        ({"embed_dim": -4}, "embed_dim must be a positive integer, got -4"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
    ]:
        with pytest.raises(ValueError, match=msg):
            LMConfig(**kwargs)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_logits(torch.zeros(1, 3), temperature=-1)


def test_checkpoint_round_trip_identical_logits(model, tmp_path):
    tok = get_tokenizer()
    path = save_checkpoint(tmp_path / "ck", model, tok, meta={"stage": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, tok2, cfg = load_checkpoint(path)
    tokens = torch.randint(0, 2000, (2, 9))
    assert torch.equal(loaded(tokens)[0], model(tokens)[0]) and tok2 == tok and cfg["meta"]["stage"] == "test"
    # Saving again replaces it atomically: no temporary or old directories are left behind.
    save_checkpoint(path, model, tok)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_errors(model, tmp_path):
    tok = get_tokenizer()
    good = save_checkpoint(tmp_path / "good", model, tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        load_checkpoint(missing)
    wrong_tok = tmp_path / "wrong_tok"
    shutil.copytree(good, wrong_tok)
    from textgym.tokenizer import TextTokenizer

    TextTokenizer.train(["some other text entirely"] * 5, vocab_size=300).save(wrong_tok / "tokenizer.json")
    with pytest.raises(ValueError, match="does not match the tokenizer the model was trained with"):
        load_checkpoint(wrong_tok)
    bad_cfg = tmp_path / "bad_cfg"
    shutil.copytree(good, bad_cfg)
    cfg = json.loads((bad_cfg / "config.json").read_text())
    cfg["model"]["hidden_dim"] = 64
    (bad_cfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not fit config.json's model"):
        load_checkpoint(bad_cfg)
    del cfg["model"]
    (bad_cfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError,
        match=r"config.json has no 'model' dict \(it has \['format', .*\]\): the checkpoint is "
        "damaged",
    ):
        load_checkpoint(bad_cfg)
    other = TextTokenizer.train(["other"] * 5, vocab_size=300)
    with pytest.raises(ValueError, match="different tokenizer"):
        load_checkpoint(good, expect_tokenizer=other)
    with pytest.raises(ValueError, match=r"model vocab_size 2000 != tokenizer vocab_size \d+"):
        save_checkpoint(tmp_path / "x", model, other)


def test_crash_while_saving_keeps_the_previous_checkpoint(model, tmp_path, monkeypatch):
    import agents.checkpoint as ck

    tok = get_tokenizer()
    path = save_checkpoint(tmp_path / "ck", model, tok, meta={"version": 1})

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "save_file", disk_full)  # fail while writing the new weights
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, tok, meta={"version": 2})
    monkeypatch.undo()
    _, _, cfg = load_checkpoint(path)
    assert cfg["meta"] == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind


def test_crash_between_the_renames_is_recovered(model, tmp_path):
    tok = get_tokenizer()
    path = save_checkpoint(tmp_path / "ck", model, tok, meta={"version": 1})
    path.rename(tmp_path / ".ck.old-123")  # as if the process died after moving the old one aside
    _, _, cfg = load_checkpoint(path)
    assert cfg["meta"] == {"version": 1} and path.is_dir()
