"""Corpus loading and splitting, prompts from held-out text, and the BPE tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textgym.corpus import BUILTIN, load_corpus, read_documents
from textgym.prompts import load_prompts
from textgym.tokenizer import TextTokenizer, get_tokenizer


def test_builtin_corpus_is_real_english_and_split_deterministically():
    c = load_corpus()
    words = sum(len(d.split()) for d in c.train + c.validation)
    assert c.name == BUILTIN and 300_000 < words < 450_000
    assert 0.03 < len(c.validation) / (len(c.train) + len(c.validation)) < 0.07
    assert not set(c.train) & set(c.validation)
    name, docs = read_documents()
    assert [d for d in docs if d in set(c.validation)] == list(c.validation)


def test_user_corpora_txt_folder_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("First doc here.\n\nSecond   doc\nspans lines.\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.txt").write_text("Folder doc one.")
    (folder / "y.txt").write_text("Folder doc two.")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "Json doc."}) + "\n")
    assert read_documents(tmp_path / "a.txt")[1] == ["First doc here.", "Second doc spans lines."]
    assert read_documents(folder)[1] == ["Folder doc one.", "Folder doc two."]
    assert read_documents(tmp_path / "c.jsonl")[1] == ["Json doc."]


def test_bad_corpora(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus path '.*missing.txt' does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(ValueError, match=r"corpus '.*empty.txt' is empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'text'"):
        load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="holds no .txt files"):
        load_corpus(tmp_path / "d")


def test_prompts_from_held_out_text():
    c = load_corpus()
    p = load_prompts(None, corpus=c, words=4)
    assert len(p) > 300 and all(len(x.split()) == 4 for x in p.prompts)
    heads = {" ".join(d.split()[:4]) for d in c.validation}
    assert set(p.prompts) <= heads


def test_tokenizer_round_trip_any_text_and_specials(tmp_path):
    tok = get_tokenizer()
    assert tok.vocab_size == 2000 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for text in ["Hello, world!", "naïve café — 日本語 🙂", "  spaces\tand\nnewlines "]:
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    assert TextTokenizer.from_file(tmp_path / "tokenizer.json") == tok


def test_fast_decode_matches_tokenizers_decoder():
    tok = get_tokenizer()
    rng = np.random.default_rng(0)
    for _ in range(3000):  # random ids include partial UTF-8 byte sequences and special tokens
        ids = rng.integers(0, tok.vocab_size, size=int(rng.integers(0, 25))).tolist()
        assert tok.decode(ids) == tok._tok.decode(ids, skip_special_tokens=True)


def test_tokenizer_training_is_deterministic_and_cached(small_corpus, tmp_path, monkeypatch):
    c = load_corpus(small_corpus)
    a = TextTokenizer.train(c.train, vocab_size=500)
    b = TextTokenizer.train(c.train, vocab_size=500)
    assert a == b
    monkeypatch.setenv("TEXTGYM_CACHE", str(tmp_path / "cache"))
    t1 = get_tokenizer(c, vocab_size=450)
    assert len(list((tmp_path / "cache").glob("tokenizer-*-450.json"))) == 1
    assert get_tokenizer(c, vocab_size=450) is t1


def test_bad_vocab_and_tokenizer_file(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 259.*got 10"):
        TextTokenizer.train(["abc"], vocab_size=10)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_file(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        TextTokenizer.from_file(tmp_path / "broken.json")


def test_text_is_decoded_strictly_and_binaries_are_refused(tmp_path):
    exe = tmp_path / "program.txt"
    exe.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4)  # an executable renamed .txt
    with pytest.raises(
        ValueError, match=r"program.txt' holds a NUL byte at byte offset 7: it looks like a binary file"
    ):
        load_corpus(exe)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\u00e9 au lait, s'il vous pla\u00eet.\n\nUne autre.".encode("latin-1"))
    with pytest.raises(
        ValueError,
        match=r"latin.txt' is not valid utf-8 text: the byte at offset 3 \(b'\\xe9'\).*"
        r"--encoding latin-1",
    ):
        load_corpus(latin)
    assert read_documents(latin, encoding="latin-1")[1] == ["Caf\u00e9 au lait, s'il vous pla\u00eet.", "Une autre."]
    with pytest.raises(ValueError, match="unknown text encoding 'klingon'"):
        read_documents(latin, encoding="klingon")


def test_document_separators(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("One sentence.\nAnother one.\n% not a separator here\n\nLast.\n")
    assert read_documents(lines, separator="line")[1] == [
        "One sentence.",
        "Another one.",
        "% not a separator here",
        "Last.",
    ]
    assert read_documents(lines, separator="blank")[1] == [
        "One sentence. Another one. % not a separator here",
        "Last.",
    ]
    pct = tmp_path / "pct.txt"
    pct.write_text("a b\n%\nc\n\nd\n%\n")
    assert read_documents(pct)[1] == ["a b", "c d"] == read_documents(pct, separator="%")[1]
    with pytest.raises(ValueError, match=r"document separator 'tab' is not one of 'auto', 'blank', '%', 'line'"):
        load_corpus(lines, separator="tab")
